using Microsoft.FSharp.Core;
using PeftSharp.Analysis;
using PeftSharp.Training;
using Plotly.NET;
using Plotly.NET.LayoutObjects;
using Chart = Plotly.NET.CSharp.Chart;
using static Plotly.NET.CSharp.GenericChartExtensions;

namespace PeftSharp.Interactive;

/// <summary>
/// Pure functions from the library's analysis records to Plotly.NET charts. The formatters, the magic commands and
/// the Lab's HTML report all draw through these, and they need no kernel (tests call them directly).
/// </summary>
public static class PeftCharts
{
    const int Height = 380;

    /// <summary>Singular values (as σ_k / σ_1) and cumulative energy against k, with the adapter rank marked.</summary>
    public static GenericChart Spectrum(SingularSpectrum spectrum)
    {
        ArgumentNullException.ThrowIfNull(spectrum);
        var k = Enumerable.Range(1, spectrum.Values.Count).ToArray();
        double top = spectrum.Values.Count > 0 && spectrum.Values[0] > 0 ? spectrum.Values[0] : 1;
        var traces = new List<GenericChart>
        {
            Chart.Line<int, double, string>(k, spectrum.Values.Select(v => v / top), ShowMarkers: true, Name: $"σ_k / σ_1 (σ_1 = {top:G4})"),
            Chart.Line<int, double, string>(k, spectrum.CumulativeEnergy, Name: "cumulative energy"),
        };
        if (spectrum.AdapterRank is int r)
            traces.Add(Chart.Line<int, double, string>([r, r], [0, 1], Name: $"adapter rank r = {r}" +
                (spectrum.EnergyAtAdapterRank is double e ? $" ({100 * e:0.#}% energy)" : ""), LineDash: StyleParam.DrawingStyle.Dash));
        return Style(Chart.Combine(traces), spectrum.Title, "k (singular value index)", "share");
    }

    /// <summary>Bars of the rank per layer; a heatmap layer × step when the ranks changed during training.</summary>
    public static GenericChart RankAllocation(RankAllocation allocation)
    {
        ArgumentNullException.ThrowIfNull(allocation);
        var title = $"rank allocation of '{allocation.AdapterName}' (total {allocation.TotalRank})";
        if (!allocation.ChangesOverTime)
            return Style(Chart.Column<int, string, string>(allocation.Ranks, Keys: allocation.Layers.ToArray(), Name: "rank"), title, "layer", "rank");
        // z[layer][step]
        var z = allocation.Layers.Select((_, i) => allocation.History.Select(h => h.Ranks[i]).ToArray()).ToArray();
        return Style(Chart.Heatmap<int, string, string, string>(z, X: allocation.History.Select(h => $"step {h.Step}").ToArray(),
            Y: allocation.Layers.ToArray(), Name: "rank", ReverseYAxis: true), title + " over training", "step", "layer");
    }

    /// <summary>One heatmap per layer: rows (tokens, examples or tasks) × experts.</summary>
    public static IReadOnlyList<GenericChart> Routing(RoutingWeights routing)
    {
        ArgumentNullException.ThrowIfNull(routing);
        return routing.Layers.Select(layer => Routing(layer, routing.RowKind)).ToList();
    }

    /// <summary>A heatmap of one layer's routing weights, rows × experts (also any other rows × sources table of
    /// weights, such as ScaLearn's scales: give it a <paramref name="title"/>).</summary>
    public static GenericChart Routing(RoutingLayer layer, string rowKind = "token", string? title = null, string columnKind = "expert")
    {
        ArgumentNullException.ThrowIfNull(layer);
        var z = layer.Weights.Select(r => r.ToArray()).ToArray();
        return Style(Chart.Heatmap<double, string, string, string>(z, X: layer.Experts.ToArray(), Y: layer.Rows.ToArray(), Name: "weight",
            ReverseYAxis: true), title ?? $"routing at {layer.Layer}", columnKind, rowKind);
    }

    /// <summary>Training loss per step, with the evaluations' metrics as markers.</summary>
    public static GenericChart Loss(TrainingLog log)
    {
        ArgumentNullException.ThrowIfNull(log);
        var traces = new List<GenericChart>
        {
            Chart.Line<int, double, string>(log.Steps.Select(s => s.Step), log.Steps.Select(s => s.Loss), Name: "training loss"),
        };
        foreach (var metric in log.Evaluations.SelectMany(e => e.Metrics.Keys).Distinct())
        {
            var points = log.Evaluations.Where(e => e.Metrics.ContainsKey(metric)).ToList();
            traces.Add(Chart.Scatter<int, double, string>(points.Select(p => p.Step), points.Select(p => p.Metrics[metric]),
                StyleParam.Mode.Lines_Markers, Name: metric));
        }
        return Style(Chart.Combine(traces), $"{log.Name}: {log.Steps.Count} steps in {log.Duration.TotalSeconds:0.0} s", "step", "loss");
    }

    /// <summary>Score against trainable parameters (log scale), one labelled point per regime: the trade-off every PEFT
    /// paper draws.</summary>
    public static GenericChart Comparison(MethodComparison comparison)
    {
        ArgumentNullException.ThrowIfNull(comparison);
        var points = comparison.Rows.Select(r => Chart.Point<long, double, string>([r.TrainableParameters], [r.Score], Name: r.Name,
            MultiText: new[] { $"{r.Name}: {r.Score:0.###} ({r.TrainablePercent:0.##}% trainable)" }, TextPosition: StyleParam.TextPosition.TopCenter)).ToList();
        var chart = Style(Chart.Combine(points), comparison.Title, "trainable parameters (log scale)", comparison.Metric);
        return chart.WithXAxisStyle<double, double, string>(AxisType: StyleParam.AxisType.Log);
    }

    static GenericChart Style(GenericChart chart, string title, string xTitle, string yTitle)
    {
        chart = Plotly.NET.Chart.withTitle(title, FSharpOption<Font>.None).Invoke(chart);
        chart = chart.WithXAxisStyle<double, double, string>(TitleText: xTitle);
        chart = chart.WithYAxisStyle<double, double, string>(TitleText: yTitle);
        return chart.WithSize(Height: Height);
    }
}

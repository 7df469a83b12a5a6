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

    /// <summary>Singular values (as σ_k / σ_1) and cumulative energy against k, with the adapter rank marked; with
    /// <paramref name="energy"/>, also the energy rank for that share and the spectrum's elbow
    /// (<see cref="SpectrumMarkers"/>).</summary>
    public static GenericChart Spectrum(SingularSpectrum spectrum, double? energy = null)
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
        if (energy is double fraction && spectrum.Values.Count > 0)
        {
            int kEnergy = spectrum.RankForEnergy(fraction), kElbow = spectrum.Elbow;
            traces.Add(Chart.Line<int, double, string>([kEnergy, kEnergy], [0, 1], Name: $"{100 * fraction:0.##}% energy at k = {kEnergy}", LineDash: StyleParam.DrawingStyle.Dot));
            traces.Add(Chart.Line<int, double, string>([kElbow, kElbow], [0, 1], Name: $"elbow at k = {kElbow}", LineDash: StyleParam.DrawingStyle.DashDot));
        }
        return Style(Chart.Combine(traces), spectrum.Title, "k (singular value index)", "share");
    }

    /// <summary>Bars of the rank per layer; a heatmap layer × step when the ranks changed during training.</summary>
    public static GenericChart RankAllocation(RankAllocation allocation)
    {
        ArgumentNullException.ThrowIfNull(allocation);
        var title = $"rank allocation of '{allocation.AdapterName}' (total {allocation.TotalRank})";
        if (!allocation.ChangesOverTime) return FinalRanks(allocation);
        // z[layer][step]
        var z = allocation.Layers.Select((_, i) => allocation.History.Select(h => h.Ranks[i]).ToArray()).ToArray();
        return Style(Chart.Heatmap<int, string, string, string>(z, X: allocation.History.Select(h => $"step {h.Step}").ToArray(),
            Y: allocation.Layers.ToArray(), Name: "rank", ReverseYAxis: true), title + " over training", "step", "layer");
    }

    /// <summary>Bars of the rank per layer now (after training, for a method that moved rank).</summary>
    public static GenericChart FinalRanks(RankAllocation allocation)
    {
        ArgumentNullException.ThrowIfNull(allocation);
        var title = allocation.ChangesOverTime
            ? $"final ranks of '{allocation.AdapterName}' at step {allocation.History[^1].Step} (total {allocation.TotalRank})"
            : $"rank allocation of '{allocation.AdapterName}' (total {allocation.TotalRank})";
        return Style(Chart.Column<int, string, string>(allocation.Ranks, Keys: allocation.Layers.ToArray(), Name: "rank"), title, "layer", "rank");
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

    /// <summary>Grouped bars of each layer's expert load (mean routing weight), one bar per expert and a dotted line at each
    /// layer's even split 1 / E_l; layers with fewer experts simply have fewer bars.</summary>
    public static GenericChart ExpertLoad(ExpertLoad load)
    {
        ArgumentNullException.ThrowIfNull(load);
        int most = load.Experts.Max(e => e.Count);
        var traces = Enumerable.Range(0, most).Select(e =>
        {
            var layers = Enumerable.Range(0, load.Layers.Count).Where(l => load.Experts[l].Count > e).ToList();
            return Chart.Column<double, string, string>(layers.Select(l => load.Loads[l][e]), Keys: layers.Select(l => load.Layers[l]).ToArray(), Name: $"expert {e}");
        }).ToList();
        traces.Add(Chart.Point<string, double, string>(load.Layers, load.Experts.Select(e => 1.0 / e.Count), Name: "even split 1 / E",
            MarkerColor: Color.fromString("black"), MarkerSymbol: StyleParam.MarkerSymbol.LineEW));
        return Style(Chart.Combine(traces), load.Title, "layer", "load (mean routing weight)");
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
    /// paper draws. With several seeds a point is the mean and its error bar ± one standard deviation over the seeds;
    /// the title says how many seeds and evaluation examples stand behind the points.</summary>
    public static GenericChart Comparison(MethodComparison comparison)
    {
        ArgumentNullException.ThrowIfNull(comparison);
        var points = comparison.Rows.Select(r =>
        {
            var point = Chart.Point<long, double, string>([r.TrainableParameters], [r.Score], Name: r.Name,
                MultiText: new[] { $"{r.Name}: {Mean(r)} ({r.TrainablePercent:0.##}% trainable)" }, TextPosition: StyleParam.TextPosition.TopCenter);
            return r.Seeds > 1 ? WithErrorBars(point, [r.StandardDeviation])
                : comparison.ShowsSamplingError ? WithErrorBars(point, [2 * comparison.SamplingStandardError(r)!.Value]) : point;
        }).ToList();
        var chart = Style(Chart.Combine(points), Titled(comparison), "trainable parameters (log scale)", comparison.Metric);
        return chart.WithXAxisStyle<double, double, string>(AxisType: StyleParam.AxisType.Log);
    }

    /// <summary>One bar per regime at its mean score with an error bar of ± one standard deviation over the seeds, and
    /// each seed's own score as a dot on its bar, so the spread is visible and not only summarised.</summary>
    public static GenericChart ScoreBars(MethodComparison comparison)
    {
        ArgumentNullException.ThrowIfNull(comparison);
        var names = comparison.Rows.Select(r => r.Name).ToArray();
        var bars = WithErrorBars(Chart.Column<double, string, string>(comparison.Rows.Select(r => r.Score), Keys: names, Name: "mean",
            MultiText: comparison.Rows.Select(Mean).ToArray()), comparison.Rows.Select(r => r.StandardDeviation));
        var seeds = Chart.Point<string, double, string>(comparison.Rows.SelectMany(r => r.Scores.Select(_ => r.Name)),
            comparison.Rows.SelectMany(r => r.Scores), Name: "one seed", MarkerColor: Color.fromString("black"));
        return Style(Chart.Combine([bars, seeds]), Titled(comparison), "regime", comparison.Metric);
    }

    /// <summary>Training loss against step for several regimes: each regime's mean over its seeds as a line and
    /// mean ± one standard deviation as a shaded band of the same colour.</summary>
    public static GenericChart LossBands(LossCurves curves)
    {
        ArgumentNullException.ThrowIfNull(curves);
        var traces = new List<GenericChart>();
        foreach (var (band, i) in curves.Bands.Select((b, i) => (b, i)))
        {
            var (line, fill) = (Palette[i % Palette.Length], Fill(Palette[i % Palette.Length]));
            var upper = band.Mean.Zip(band.StandardDeviation, (m, s) => m + s).ToArray();
            var lower = band.Mean.Zip(band.StandardDeviation, (m, s) => m - s).ToArray();
            // Plotly fills "tonexty" down to the trace drawn just before: upper edge first, then the lower edge filled up to it.
            traces.Add(Chart.Line<int, double, string>(band.Steps, upper, ShowLegend: false, LineColor: Color.fromString(fill), LineWidth: 0));
            traces.Add(Chart.Line<int, double, string>(band.Steps, lower, ShowLegend: false, LineColor: Color.fromString(fill), LineWidth: 0,
                Fill: StyleParam.Fill.ToNext_y, FillColor: Color.fromString(fill)));
            traces.Add(Chart.Line<int, double, string>(band.Steps, band.Mean, Name: $"{band.Name} ({band.Runs} run{(band.Runs == 1 ? "" : "s")})",
                LineColor: Color.fromString(line)));
        }
        int smoothing = curves.Bands.Max(b => b.Smoothing);
        var title = $"{curves.Title} (mean ± std over seeds{(smoothing > 1 ? $", each run averaged over {smoothing} steps" : "")})";
        return Style(Chart.Combine(traces), title, "step", "training loss");
    }

    /// <summary>ΔM (mean change of the row norms) against ΔD (mean 1 − cosine of the rows) per layer, one colour per
    /// series, as DoRA's Figure 2 draws it; the legend gives each series' correlation.</summary>
    public static GenericChart MagnitudeDirection(MagnitudeDirectionScatter scatter)
    {
        ArgumentNullException.ThrowIfNull(scatter);
        var traces = scatter.Series.Select((s, i) => Chart.Point<double, double, string>(s.Value.Select(p => p.DeltaDirection), s.Value.Select(p => p.DeltaMagnitude),
            Name: $"{s.Key} (r = {MagnitudeDirectionScatter.Correlation(s.Value):0.00})", MultiText: s.Value.Select(p => p.Layer).ToArray(),
            MarkerColor: Color.fromString(Palette[i % Palette.Length]))).ToList();
        return Style(Chart.Combine(traces), scatter.Title, "ΔD (direction change)", "ΔM (magnitude change)");
    }

    /// <summary>A labelled heatmap, rows top to bottom; values of both signs get a diverging colour scale centred on
    /// zero, so a negative weight reads differently from a small positive one.</summary>
    public static GenericChart Heatmap(LabelledHeatmap map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var z = map.Values.Select(r => r.ToArray()).ToArray();
        var chart = Chart.Heatmap<double, string, string, string>(z, X: map.Columns.ToArray(), Y: map.Rows.ToArray(), Name: map.ValueKind,
            ReverseYAxis: true, ColorScale: map.HasBothSigns ? StyleParam.Colorscale.RdBu : StyleParam.Colorscale.Viridis,
            ReverseScale: map.HasBothSigns);
        if (map.HasBothSigns)
        {
            double limit = Math.Max(Math.Abs(map.Min), Math.Abs(map.Max));
            chart = GenericChart.mapTrace(FuncConvert.FromFunc<Trace, Trace>(trace =>
            {
                trace.SetProperty("zmid", 0.0);
                trace.SetProperty("zmin", -limit);
                trace.SetProperty("zmax", limit);
                return trace;
            }), chart);
        }
        return Style(chart, map.Title, map.ColumnKind, map.RowKind);
    }

    /// <summary>Each profiled module's forward and backward time in one step, stacked, in the order the forward calls
    /// them (a module that does not train has almost no backward of its own beyond the gradient it passes on).</summary>
    public static GenericChart ProfileModules(TrainingProfile profile)
    {
        ArgumentNullException.ThrowIfNull(profile);
        var names = profile.Modules.Select(m => m.Path).ToArray();
        var forward = Chart.Column<double, string, string>(profile.Modules.Select(m => 1000 * m.ForwardSeconds), Keys: names, Name: "forward",
            MarkerColor: Color.fromString(Palette[0]));
        var backward = Chart.Column<double, string, string>(profile.Modules.Select(m => 1000 * m.BackwardSeconds), Keys: names, Name: "backward",
            MarkerColor: Color.fromString(Palette[1]));
        return Style(Stacked(Chart.Combine([forward, backward])), $"{profile.Title}: time per module in one step (mean of {profile.Steps})", "module", "ms");
    }

    // Plotly draws a horizontal bar chart's first category at the bottom: the phases and kinds are given reversed, so they
    // read top down in step order.

    /// <summary>The step's time by phase, one colour per profile: zero_grad, forward (modules and between them),
    /// backward (the same), optimizer step.</summary>
    public static GenericChart ProfilePhases(params TrainingProfile[] profiles)
    {
        ArgumentOutOfRangeException.ThrowIfZero(profiles.Length);
        var traces = profiles.Select((p, i) => Chart.Bar<double, string, string>(p.Phases.Reverse().Select(x => 1000 * x.Seconds), Keys: p.Phases.Reverse().Select(x => x.Phase).ToArray(),
            Name: p.Title, MarkerColor: Color.fromString(Palette[i % Palette.Length]))).ToList();
        var title = profiles.Length == 1 ? $"{profiles[0].Title}: time by phase" : "time by phase";
        return Style(Chart.Combine(traces), title + " (profiled step)", "ms per step", "phase");
    }

    /// <summary>Memory by kind, one colour per profile: what lives between steps (parameters, their gradients, the
    /// optimizer's state) next to what a step adds (module outputs, the step's peak above its start).</summary>
    public static GenericChart ProfileMemory(params TrainingProfile[] profiles)
    {
        ArgumentOutOfRangeException.ThrowIfZero(profiles.Length);
        var traces = profiles.Select((p, i) => Chart.Bar<double, string, string>(p.Memory.Reverse().Select(m => m.Bytes / 1e6), Keys: p.Memory.Reverse().Select(m => m.Kind).ToArray(),
            Name: p.Title, MarkerColor: Color.fromString(Palette[i % Palette.Length]))).ToList();
        var title = profiles.Length == 1 ? $"{profiles[0].Title}: memory by kind" : "memory by kind";
        return Style(Chart.Combine(traces), title, "MB", "kind");
    }

    static GenericChart Stacked(GenericChart chart) =>
        GenericChart.mapLayout(FuncConvert.FromFunc<Layout, Layout>(layout =>
        {
            layout.SetProperty("barmode", "stack");
            return layout;
        }), chart);

    // D3's category10, the colours Plotly itself cycles through.
    static readonly string[] Palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

    static string Fill(string hex) =>
        $"rgba({Convert.ToInt32(hex[1..3], 16)},{Convert.ToInt32(hex[3..5], 16)},{Convert.ToInt32(hex[5..7], 16)},0.2)";

    static string Mean(ComparisonRow r) => r.Seeds > 1 ? $"{r.Score:0.###} ± {r.StandardDeviation:0.###}" : $"{r.Score:0.###}";

    static string Titled(MethodComparison comparison) =>
        $"{comparison.Title} ({(comparison.Seeds > 1 ? "mean ± std, " : comparison.ShowsSamplingError ? "± 2 SE of the evaluation sample, " : "")}{comparison.Basis})";

    /// <summary>Symmetric error bars of the given lengths on the chart's trace(s).</summary>
    static GenericChart WithErrorBars(GenericChart chart, IEnumerable<double> lengths) =>
        Plotly.NET.Chart.withYErrorStyle<double, double>(Visible: true, Type: StyleParam.ErrorType.Data, Symmetric: true, Array: lengths.ToArray(),
            Arrayminus: null, Value: null, Valueminus: null, Traceref: null, Tracerefminus: null, Copy_ystyle: null, Color: null, Thickness: null, Width: null).Invoke(chart);

    /// <summary>A chart a notebook built itself with Plotly.NET (<c>Plotly.NET.CSharp.Chart.Line</c>, <c>Column</c>, ...)
    /// given the title, axis titles and height every chart here has (Plotly.NET's own title setter takes F# options).</summary>
    public static GenericChart Labelled(GenericChart chart, string title, string xTitle, string yTitle)
    {
        ArgumentNullException.ThrowIfNull(chart);
        return Style(chart, title, xTitle, yTitle);
    }

    static GenericChart Style(GenericChart chart, string title, string xTitle, string yTitle)
    {
        chart = Plotly.NET.Chart.withTitle(title, FSharpOption<Font>.None).Invoke(chart);
        chart = chart.WithXAxisStyle<double, double, string>(TitleText: xTitle);
        chart = chart.WithYAxisStyle<double, double, string>(TitleText: yTitle);
        return chart.WithSize(Height: Height);
    }
}

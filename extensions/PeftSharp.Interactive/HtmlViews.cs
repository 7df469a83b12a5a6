using System.Globalization;
using System.Net;
using System.Text;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods;
using PeftSharp.Training;

namespace PeftSharp.Interactive;

/// <summary>HTML for the library's records: plain tables and a line of text, plus the charts of <see cref="PeftCharts"/>.
/// Pure functions, used by the formatters and the magic commands.</summary>
public static class HtmlViews
{
    const string TableStyle = "border-collapse:collapse;font-size:90%";

    static string E(object? value) => WebUtility.HtmlEncode(Convert.ToString(value, CultureInfo.InvariantCulture) ?? "");

    static string Table(IEnumerable<string> headers, IEnumerable<IEnumerable<object?>> rows)
    {
        var html = new StringBuilder($"<table class=\"peftsharp-table\" style=\"{TableStyle}\"><thead><tr>");
        foreach (var h in headers) html.Append("<th style=\"text-align:left;padding:2px 8px\">").Append(E(h)).Append("</th>");
        html.Append("</tr></thead><tbody>");
        foreach (var row in rows)
        {
            html.Append("<tr>");
            foreach (var cell in row) html.Append("<td style=\"padding:2px 8px\">").Append(cell is RawHtml raw ? raw.Html : E(cell)).Append("</td>");
            html.Append("</tr>");
        }
        return html.Append("</tbody></table>").ToString();
    }

    sealed record RawHtml(string Html);

    static string Line(string text) => $"<div class=\"peftsharp-line\" style=\"font-family:monospace;margin:4px 0\">{E(text)}</div>";

    static string Shape(long[] shape) => shape.Length == 0 ? "" : "[" + string.Join(" x ", shape) + "]";

    /// <summary>An adapted model: PEFT's trainable-parameter line, the active adapters, and one row per adapter per layer.</summary>
    public static string PeftModel(PeftModel peft) => ParameterReport(peft.ParameterReport());

    /// <summary>A parameter report: the trainable line and the per-layer table (method, rank, parameters, active, merged).</summary>
    public static string ParameterReport(ParameterReport report)
    {
        var head = Line($"{report} · trainable {Bytes(report.TrainableBytes)} of {Bytes(report.AllBytes)}") +
                   Line($"active adapters: {(report.ActiveAdapters.Count == 0 ? "none" : string.Join(", ", report.ActiveAdapters))}" +
                        (report.AdaptersDisabled ? " (disabled: the model computes the base output)" : ""));
        return "<div class=\"peftsharp-summary\">" + head + Table(
            ["layer", "base", "shape", "adapter", "method", "rank", "parameters", "active", "merged"],
            report.Layers.Select(l => new object?[] { l.Path, l.BaseType, Shape(l.BaseShape), l.AdapterName, l.Method, l.Rank?.ToString(CultureInfo.InvariantCulture) ?? "-",
                                                     l.Parameters.ToString("N0", CultureInfo.InvariantCulture), l.Active ? "yes" : "no", l.Merged ? "yes" : "no" })) +
               string.Concat(report.Layers.Where(l => l.Note is not null).Select(l => Line($"note: '{l.Path}' ({l.AdapterName}): {l.Note}"))) + "</div>";
    }

    /// <summary>One adapter layer: its path, base module, and each adapter with method, rank and parameters.</summary>
    public static string AdapterLayer(AdapterLayer layer)
    {
        var weight = layer.BaseLayer.get_parameter("weight");
        return "<div class=\"peftsharp-layer\">" + Line($"{layer.Path}: {layer.BaseLayer.GetType().Name} {Shape(weight?.shape ?? [])}" +
                                                         (layer.IsMerged ? $", merged: {string.Join(", ", layer.MergedAdapters)}" : "")) +
            Table(["adapter", "method", "rank", "parameters", "active", "merged", "can merge"],
                layer.AdapterNames.Select(n => new object?[] { n, layer[n].MethodName, layer[n].Rank?.ToString(CultureInfo.InvariantCulture) ?? "-",
                    layer[n].parameters().Sum(p => p.numel()).ToString("N0", CultureInfo.InvariantCulture), layer.ActiveAdapters.Contains(n) ? "yes" : "no",
                    layer.MergedAdapters.Contains(n) ? "yes" : "no", layer[n].CanMerge ? "yes" : "no" })) + "</div>";
    }

    /// <summary>What a target pattern matches, before anything changes.</summary>
    public static string TargetSelection(TargetSelection selection, string? targets = null)
    {
        static string List(IReadOnlyList<string> paths) => paths.Count == 0 ? "-" : string.Join("<br/>", paths.Select(E));
        var title = Line($"{(targets is null ? "targets" : $"targets '{targets}'")}: {selection.Matched.Count} matched, {selection.Excluded.Count} excluded, {selection.Unmatched.Count} not matched");
        return "<div class=\"peftsharp-targets\">" + title + Table(["matched (will be adapted)", "excluded", "not matched"],
            [[new RawHtml(List(selection.Matched)), new RawHtml(List(selection.Excluded)), new RawHtml(List(selection.Unmatched))]]) + "</div>";
    }

    /// <summary>The method list with each method's parameters.</summary>
    public static string Methods(IEnumerable<MethodInfo> methods) => "<div class=\"peftsharp-methods\">" + Table(
        ["method", "family", "computes", "merges", "parameters (--name: default)", "paper"],
        methods.Select(m => new object?[] { m.Name, m.Family, m.Formula, m.CanMerge ? "yes" : "no",
            new RawHtml(string.Join("<br/>", m.Parameters.Select(p => $"--{E(p.Name)} ({E(p.Type)}, {E(p.Default)}): {E(p.Description)}"))), m.Papers })) + "</div>";

    /// <summary>A training log: totals, the last evaluation, and the loss chart.</summary>
    public static string TrainingLog(TrainingLog log)
    {
        var text = $"{log.Name}: {log.Steps.Count} steps in {log.Duration.TotalSeconds:0.0} s ({log.Steps.Count / Math.Max(log.Duration.TotalSeconds, 1e-9):0.0} steps/s)" +
                   (log.FirstLoss is double first && log.RecentLoss() is double last ? $", loss {first:0.0000} -> {last:0.0000} (mean of the last 10)" : "") +
                   $", trainable {log.TrainableParameters:N0} of {log.AllParameters:N0}, peak working set {Bytes(log.PeakWorkingSetBytes)}";
        var evaluation = log.LastEvaluation is { } e
            ? Line($"evaluation at step {e.Step}: " + string.Join(", ", e.Metrics.Select(m => $"{m.Key} {m.Value:0.0000}")))
            : "";
        return "<div class=\"peftsharp-training\">" + Line(text) + evaluation + (log.Steps.Count > 0 ? ChartHtml.Fragment(PeftCharts.Loss(log)) : "") + "</div>";
    }

    /// <summary>A spectrum: its chart and a line of numbers (effective rank, energy at the adapter rank; with
    /// <paramref name="energy"/>, the energy rank for that share and the elbow).</summary>
    public static string Spectrum(SingularSpectrum spectrum, double? energy = null) =>
        "<div class=\"peftsharp-spectrum\">" + Line(spectrum.ToString() +
            (energy is double e && spectrum.Values.Count > 0 ? $"; {100 * e:0.##}% energy at k = {spectrum.RankForEnergy(e)}, elbow at k = {spectrum.Elbow}" : ""))
        + ChartHtml.Fragment(PeftCharts.Spectrum(spectrum, energy)) + "</div>";

    /// <summary>A rank allocation: bars per layer, or, when the ranks moved during training, the layer × step heatmap and
    /// the final bars; and its totals.</summary>
    public static string RankAllocation(RankAllocation allocation) =>
        "<div class=\"peftsharp-ranks\">" + Line(allocation.ToString()) + ChartHtml.Fragment(PeftCharts.RankAllocation(allocation)) +
        (allocation.ChangesOverTime ? ChartHtml.Fragment(PeftCharts.FinalRanks(allocation)) : "") + "</div>";

    /// <summary>Expert load: grouped bars per layer with the even split marked.</summary>
    public static string ExpertLoad(ExpertLoad load) =>
        "<div class=\"peftsharp-expert-load\">" + Line(load.ToString()) + ChartHtml.Fragment(PeftCharts.ExpertLoad(load)) + "</div>";

    /// <summary>Routing weights: each expert's load over the rows shown (bars, every layer), then one heatmap per layer with
    /// the loads in numbers.</summary>
    public static string Routing(RoutingWeights routing) =>
        "<div class=\"peftsharp-routing\">" + Line(routing.ToString()) +
        ChartHtml.Fragment(PeftCharts.ExpertLoad(Analysis.ExpertLoad.Of($"expert load over the {routing.RowKind}s shown", [routing]))) +
        string.Join("\n", routing.Layers.Select(l =>
            Line($"{l.Layer}: expert load " + string.Join(", ", l.Experts.Select((x, j) => $"{x} {l.ExpertLoad[j]:0.000}"))) +
            ChartHtml.Fragment(PeftCharts.Routing(l, routing.RowKind)))) + "</div>";

    /// <summary>Usage of a magic command: each subcommand with its description and parameters.</summary>
    public static string DirectiveHelp(Microsoft.DotNet.Interactive.Directives.KernelActionDirective directive) =>
        "<div class=\"peftsharp-help\">" + Line($"{directive.Name} <subcommand> --parameter value ...") + Table(["subcommand", "what it does", "parameters"],
            directive.Subcommands.Select(sub => new object?[] { sub.Name, sub.Description,
                new RawHtml(string.Join("<br/>", sub.Parameters.Select(p => $"{E(p.Name)}{(p.Flag ? " (flag)" : "")}: {E(p.Description)}"))) })) + "</div>";

    /// <summary>A comparison of trained regimes: a table (score as mean ± std over the seeds, each seed's score, trainable
    /// share, time, memory), the number of seeds and evaluation examples, the trade-off chart, and with several seeds a
    /// bar chart with error bars and every seed's dot.</summary>
    public static string Comparison(MethodComparison comparison)
    {
        var best = comparison.Best;
        bool seeded = comparison.Seeds > 1;
        static string F(double v) => v.ToString("0.####", CultureInfo.InvariantCulture);
        // One seed: the only error bar there is comes from the evaluation set's size (see SamplingStandardError).
        bool sampled = comparison.ShowsSamplingError;
        var headers = new List<string> { "regime", seeded ? $"{comparison.Metric} (mean ± std)" : sampled ? $"{comparison.Metric} ± 2 SE of the evaluation sample" : comparison.Metric };
        if (seeded) headers.AddRange(["seeds", "per seed"]);
        headers.AddRange(["trainable parameters", "trainable %", "training time", "peak memory above start"]);
        return "<div class=\"peftsharp-comparison\">" + Line(comparison.Title) +
            Line($"{comparison.Basis}{(seeded ? "; ± is the standard deviation over the seeds, error bars ± 1 std"
                : sampled ? "; ± is twice the standard error √(p(1 − p)/n) that the evaluation set's size alone gives an accuracy (error bars the same): the noise between training seeds is not measured" : "")}") + Table(headers,
            comparison.Rows.Select(r =>
            {
                var cells = new List<object?> { r.Name + (r == best ? " (best)" : ""), r.Seeds > 1 ? $"{F(r.Score)} ± {F(r.StandardDeviation)}"
                    : sampled ? $"{F(r.Score)} ± {F(2 * comparison.SamplingStandardError(r)!.Value)}" : F(r.Score) };
                if (seeded) cells.AddRange([r.Seeds.ToString(CultureInfo.InvariantCulture), string.Join(", ", r.Scores.Select(F))]);
                cells.AddRange([r.TrainableParameters.ToString("N0", CultureInfo.InvariantCulture), r.TrainablePercent.ToString("0.###", CultureInfo.InvariantCulture),
                    $"{r.TrainingTime.TotalSeconds:0.0} s", r.PeakMemoryBytes is long bytes ? Bytes(bytes) : "not measured"]);
                return cells;
            })) + ChartHtml.Fragment(PeftCharts.Comparison(comparison)) + (seeded ? ChartHtml.Fragment(PeftCharts.ScoreBars(comparison)) : "") + "</div>";
    }

    /// <summary>Loss bands of several regimes: one line per regime (final mean ± std, runs) and the overlay chart.</summary>
    public static string LossCurves(LossCurves curves) =>
        "<div class=\"peftsharp-loss-curves\">" + Line(curves.Title) + Table(["regime", "runs", "final loss (mean ± std)", "mean loss over the run (mean ± std)"],
            curves.Bands.Select(b => new object?[]
            {
                b.Name, b.Runs, $"{b.FinalMean:0.####} ± {b.StandardDeviation[^1]:0.####}",
                $"{SeedStatistics.Mean(b.RunMeanLosses):0.####} ± {SeedStatistics.StandardDeviation(b.RunMeanLosses):0.####}",
            })) + ChartHtml.Fragment(PeftCharts.LossBands(curves)) + "</div>";

    /// <summary>DoRA's magnitude-against-direction picture: one line per series with its ΔM–ΔD correlation, and the
    /// scatter.</summary>
    public static string MagnitudeDirection(MagnitudeDirectionScatter scatter) =>
        "<div class=\"peftsharp-magnitude-direction\">" + Line(scatter.Title) + Table(["series", "points", "correlation of ΔM and ΔD"],
            scatter.Series.Select(s => new object?[] { s.Key, s.Value.Count, MagnitudeDirectionScatter.Correlation(s.Value).ToString("0.###", CultureInfo.InvariantCulture) }))
        + ChartHtml.Fragment(PeftCharts.MagnitudeDirection(scatter)) + "</div>";

    /// <summary>A labelled heatmap: its one-line summary and the chart.</summary>
    public static string Heatmap(LabelledHeatmap map) =>
        "<div class=\"peftsharp-heatmap\">" + Line(map.ToString()) + ChartHtml.Fragment(PeftCharts.Heatmap(map)) + "</div>";

    /// <summary>A claim's verdict: the claim, its source, the outcome in words and the per-seed differences, in a box
    /// coloured by the outcome (green held, red did not hold, grey within the noise).</summary>
    public static string ClaimVerdict(ClaimVerdict verdict)
    {
        var colour = verdict.Outcome switch { ClaimOutcome.Held => "#2ca02c", ClaimOutcome.DidNotHold => "#d62728", _ => "#7f7f7f" };
        var claim = verdict.Claim.Statement + (verdict.Claim.Source.Length > 0 ? $" ({verdict.Claim.Source})" : "");
        return $"<div class=\"peftsharp-claim peftsharp-claim-{verdict.Outcome.ToString().ToLowerInvariant()}\" style=\"border-left:4px solid {colour};padding:2px 8px;margin:4px 0\">" +
            $"<div><b>claim:</b> {E(claim)}</div><div><b>verdict:</b> {E(verdict.Summary)}</div>" +
            Line($"{verdict.Treatment} {verdict.TreatmentMean:0.####}, {verdict.Baseline} {verdict.BaselineMean:0.####}; " +
                 (verdict.Unit == Analysis.ClaimUnit.EvaluationExample
                     ? $"of {verdict.Differences.Count:N0} examples, {verdict.Treatment} did better on {verdict.Differences.Count(d => verdict.HigherIsBetter ? d > 0 : d < 0)} and {verdict.Baseline} on {verdict.Differences.Count(d => verdict.HigherIsBetter ? d < 0 : d > 0)}"
                     : "per seed Δ = " + string.Join(", ", verdict.Differences.Select(d => d.ToString("+0.####;-0.####;0", CultureInfo.InvariantCulture)))) +
                 $"; a direction counts only when Δ is more than {Analysis.Claim.NoiseMultiple:0} standard errors of the paired differences past the threshold ({(verdict.Margin > 0 ? $"-{verdict.Margin:0.####}" : "0")})") + "</div>";
    }

    /// <summary>A training profile: the step's time with and without the hooks, the phases, memory by kind, the slowest
    /// modules, and the two charts.</summary>
    public static string Profile(TrainingProfile profile, int top = 12)
    {
        var c = CultureInfo.InvariantCulture;
        string Ms(double seconds) => (1000 * seconds).ToString("0.0", c) + " ms";
        string Share(double seconds) => profile.StepSeconds > 0 ? (seconds / profile.StepSeconds).ToString("P0", c) : "";
        return "<div class=\"peftsharp-profile\">" +
            Line($"{profile.Title}: {profile.TrainableParameters.ToString("N0", c)} of {profile.AllParameters.ToString("N0", c)} parameters train; a step takes {Ms(profile.UnprofiledStepSeconds)} " +
                 $"({Ms(profile.StepSeconds)} with the profile's hooks, x{profile.Overhead.ToString("0.00", c)}; shares below are of the profiled step), mean of {profile.Steps}") +
            Table(["phase", "time", "share"], profile.Phases.Select(p => new object?[] { p.Phase, Ms(p.Seconds), Share(p.Seconds) })) +
            Table(["memory", "size"], profile.Memory.Select(m => new object?[] { m.Kind, Bytes(m.Bytes) })
                .Append(["minor page faults per step", profile.MinorPageFaultsPerStep.ToString("N0", c)])
                .Append(["managed allocations per step", $"{Bytes(profile.ManagedBytesPerStep)}, {profile.CollectionsPerStep.ToString("0.##", c)} collections"])) +
            Line($"the {Math.Min(top, profile.Modules.Count)} slowest of {profile.Modules.Count} modules:") +
            Table(["module", "kind", "forward", "backward", "output", "trains"], profile.Modules.OrderByDescending(m => m.TotalSeconds).Take(top)
                .Select(m => new object?[] { m.Path, m.Kind, Ms(m.ForwardSeconds), Ms(m.BackwardSeconds), Bytes(m.OutputBytes), m.TrainableParameters.ToString("N0", c) })) +
            ChartHtml.Fragment(PeftCharts.ProfilePhases(profile)) + ChartHtml.Fragment(PeftCharts.ProfileMemory(profile)) + ChartHtml.Fragment(PeftCharts.ProfileModules(profile)) + "</div>";
    }

    /// <summary>A short error box (used for messages that are not failures, e.g. a hint).</summary>
    public static string Note(string text) => $"<div class=\"peftsharp-note\" style=\"margin:4px 0;color:#555\">{E(text)}</div>";

    internal static string Bytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.00} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.0} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:0.0} KiB",
        _ => $"{bytes} B",
    };
}

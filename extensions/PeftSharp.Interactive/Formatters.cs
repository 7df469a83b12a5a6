using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Training;
using Plotly.NET;

namespace PeftSharp.Interactive;

/// <summary>Registers the HTML formatters for the library's types (process-wide, as .NET Interactive formatters are).</summary>
public static class Formatters
{
    static readonly object Gate = new();
    static bool _registered;

    /// <summary>Registers every formatter once per process.</summary>
    public static void Register()
    {
        lock (Gate)
        {
            if (_registered) return;
            _registered = true;
        }
        const string html = HtmlFormatter.MimeType;
        Formatter.Register<PeftHtml>((value, writer) => writer.Write(value.Html), html);
        Formatter.Register<PeftModel>((peft, writer) => writer.Write(HtmlViews.PeftModel(peft)), html);
        Formatter.Register<PeftModel>((peft, writer) => writer.Write(peft.ParameterReport().ToString()), PlainTextFormatter.MimeType);
        Formatter.Register<AdapterLayer>((layer, writer) => writer.Write(HtmlViews.AdapterLayer(layer)), html);
        Formatter.Register<ParameterReport>((report, writer) => writer.Write(HtmlViews.ParameterReport(report)), html);
        Formatter.Register<ParameterReport>((report, writer) => writer.Write(report.ToString()), PlainTextFormatter.MimeType);
        Formatter.Register<TargetSelection>((selection, writer) => writer.Write(HtmlViews.TargetSelection(selection)), html);
        Formatter.Register<TrainingLog>((log, writer) => writer.Write(HtmlViews.TrainingLog(log)), html);
        Formatter.Register<SingularSpectrum>((spectrum, writer) => writer.Write(HtmlViews.Spectrum(spectrum)), html);
        Formatter.Register<RankAllocation>((allocation, writer) => writer.Write(HtmlViews.RankAllocation(allocation)), html);
        Formatter.Register<RoutingWeights>((routing, writer) => writer.Write(HtmlViews.Routing(routing)), html);
        Formatter.Register<ExpertLoad>((load, writer) => writer.Write(HtmlViews.ExpertLoad(load)), html);
        Formatter.Register<MethodComparison>((comparison, writer) => writer.Write(HtmlViews.Comparison(comparison)), html);
        Formatter.Register<LossCurves>((curves, writer) => writer.Write(HtmlViews.LossCurves(curves)), html);
        Formatter.Register<LabelledHeatmap>((map, writer) => writer.Write(HtmlViews.Heatmap(map)), html);
        Formatter.Register<MagnitudeDirectionScatter>((scatter, writer) => writer.Write(HtmlViews.MagnitudeDirection(scatter)), html);
        Formatter.Register<ClaimVerdict>((verdict, writer) => writer.Write(HtmlViews.ClaimVerdict(verdict)), html);
        Formatter.Register<TrainingProfile>((profile, writer) => writer.Write(HtmlViews.Profile(profile)), html);
        Formatter.Register<TrainingProfile>((profile, writer) => writer.Write(profile.ToText()), PlainTextFormatter.MimeType);
        Formatter.Register<ClaimVerdict>((verdict, writer) => writer.Write(verdict.ToString()), PlainTextFormatter.MimeType);
        // Plotly.NET's own GenericChart formatter loads plotly.js from a CDN; charts made in cells render like ours. (Plotly's
        // MIME type application/vnd.plotly.v1+json is not offered beside it: dotnet-interactive 1.0.712001's Jupyter bridge
        // sends that value as a JSON string, not the figure object plotly's JupyterLab renderer needs, and a front end that
        // picked it would draw nothing.)
        Formatter.Register<GenericChart>((chart, writer) => writer.Write(ChartHtml.Fragment(chart)), html);
    }
}

using System.Globalization;
using System.Net;
using System.Reflection;
using Plotly.NET;

namespace PeftSharp.Interactive;

/// <summary>
/// Turns Plotly.NET charts into HTML fragments that need no network: each fragment holds its figure and draws it with the
/// page's global <c>Plotly</c>, waiting for it if plotly.js has not arrived yet. plotly.js itself (the copy Plotly.NET
/// embeds) reaches the page once: in a notebook with the extension's load message (<see cref="PlotlyLoader"/>, shown by the
/// <c>#r</c> cell, so it precedes every chart and is saved with the notebook), in the Lab's report once in its head. Nothing
/// is fetched from a CDN, so charts draw offline in Jupyter (trusted notebooks, nbconvert's HTML), VS Code and the report;
/// where scripts do not run (an untrusted notebook), the fragment's text says what the chart is and why it is not drawn.
/// </summary>
public static class ChartHtml
{
    /// <summary>The class every chart's div carries (the report looks for it).</summary>
    public const string ChartClass = "peftsharp-chart";

    /// <summary>The attribute that marks the script tag carrying plotly.js (the Lab's report drops it: its head has one).</summary>
    public const string LoaderAttribute = "data-peftsharp-plotly";

    static int _counter;

    /// <summary>An HTML fragment (div + script) that draws <paramref name="chart"/> once plotly.js is on the page.</summary>
    public static string Fragment(GenericChart chart)
    {
        ArgumentNullException.ThrowIfNull(chart);
        var figure = GenericChart.toFigureJson(chart);
        var id = $"{ChartClass}-{Guid.NewGuid():N}".Substring(0, ChartClass.Length + 13) + Interlocked.Increment(ref _counter).ToString(CultureInfo.InvariantCulture);
        var title = WebUtility.HtmlEncode(Title(chart) ?? "chart");
        // The text inside the div stays only where no script ran; drawing replaces it.
        return $$"""
            <div id="{{id}}" class="{{ChartClass}}" style="width:100%;max-width:900px"><div style="color:#777;font-style:italic;padding:4px 0">chart: {{title}} (drawn by plotly.js when the page runs scripts: in Jupyter, trust the notebook)</div></div>
            <script type="text/javascript">
            (function () {
              var figure = {{figure}};
              var draw = function (P) { var el = document.getElementById('{{id}}'); if (!el) return; el.innerHTML = ''; P.newPlot(el, figure.data, figure.layout, { responsive: true, displaylogo: false }); };
              if (typeof window.Plotly !== 'undefined') { draw(window.Plotly); return; }
              (window.peftsharpPending = window.peftsharpPending || []).push(draw);
            })();
            </script>
            """;
    }

    /// <summary>
    /// A script tag that puts plotly.js on the page (unless it is there already) and draws the charts waiting for it. It
    /// hides an AMD <c>define</c> (require.js in the classic notebook and nbconvert's pages) while plotly.js runs, so that
    /// plotly.js sets <c>window.Plotly</c> instead of registering an anonymous module.
    /// </summary>
    public static string PlotlyLoader() =>
        $"<script type=\"text/javascript\" {LoaderAttribute}=\"{PlotlyVersion()}\">\n" +
        "if (typeof window.Plotly === 'undefined') { (function () { var savedDefine = window.define; window.define = undefined; try {\n" +
        PlotlyJs() +
        "\n} finally { window.define = savedDefine; } })(); }\n" +
        "(window.peftsharpPending || []).splice(0).forEach(function (draw) { draw(window.Plotly); });\n</script>";

    static string? Title(GenericChart chart)
    {
        try
        {
            using var json = System.Text.Json.JsonDocument.Parse(GenericChart.toFigureJson(chart));
            return json.RootElement.TryGetProperty("layout", out var layout) && layout.TryGetProperty("title", out var title)
                ? title.ValueKind == System.Text.Json.JsonValueKind.String ? title.GetString() : title.TryGetProperty("text", out var text) ? text.GetString() : null
                : null;
        }
        catch (System.Text.Json.JsonException)
        {
            return null;
        }
    }

    /// <summary>Several charts, one after another.</summary>
    public static string Fragments(IEnumerable<GenericChart> charts) => string.Join("\n", charts.Select(Fragment));

    /// <summary>The full plotly.js that Plotly.NET ships, as one script tag: put it once at the top of a page and every
    /// <see cref="Fragment"/> on it renders without a network.</summary>
    public static string PlotlyScriptTag() => "<script type=\"text/javascript\">" + PlotlyJs() + "</script>";

    /// <summary>The plotly.js source embedded in Plotly.NET (about 3.6 MB).</summary>
    public static string PlotlyJs()
    {
        var assembly = typeof(GenericChart).Assembly;
        var name = PlotlyResource(assembly);
        using var stream = assembly.GetManifestResourceStream(name)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>The plotly.js version Plotly.NET embeds, from its resource name (e.g. 2.28.0).</summary>
    public static string PlotlyVersion()
    {
        var name = PlotlyResource(typeof(GenericChart).Assembly);
        return name["Plotly.NET.plotly-".Length..^".min.js".Length];
    }

    static string PlotlyResource(Assembly assembly) =>
        assembly.GetManifestResourceNames().FirstOrDefault(n => n.StartsWith("Plotly.NET.plotly-", StringComparison.Ordinal) && n.EndsWith(".min.js", StringComparison.Ordinal))
        ?? throw new InvalidOperationException($"Plotly.NET {assembly.GetName().Version} does not embed plotly.js.");
}

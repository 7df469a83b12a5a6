using System.Globalization;
using System.Reflection;
using Plotly.NET;

namespace PeftSharp.Interactive;

/// <summary>
/// Turns Plotly.NET charts into HTML fragments that draw with a global <c>Plotly</c> when the page has one (the Lab's
/// report includes plotly.js once, so charts render offline) and otherwise load the plotly.js build Plotly.NET names
/// (through require.js where the front end has it, as Jupyter does; else a script tag), as a live notebook needs.
/// </summary>
public static class ChartHtml
{
    /// <summary>The class every chart's div carries (the report looks for it).</summary>
    public const string ChartClass = "peftsharp-chart";

    static int _counter;

    /// <summary>An HTML fragment (div + script) that draws <paramref name="chart"/>.</summary>
    public static string Fragment(GenericChart chart)
    {
        ArgumentNullException.ThrowIfNull(chart);
        var figure = GenericChart.toFigureJson(chart);
        var id = $"{ChartClass}-{Guid.NewGuid():N}".Substring(0, ChartClass.Length + 13) + Interlocked.Increment(ref _counter).ToString(CultureInfo.InvariantCulture);
        var source = PlotlySource();
        return $$"""
            <div id="{{id}}" class="{{ChartClass}}" style="width:100%;max-width:900px"></div>
            <script type="text/javascript">
            (function () {
              var figure = {{figure}};
              var draw = function (P) { P.newPlot('{{id}}', figure.data, figure.layout, { responsive: true, displaylogo: false }); };
              if (typeof window.Plotly !== 'undefined') { draw(window.Plotly); return; }
              var src = '{{source}}';
              if (typeof window.requirejs === 'function' && typeof window.requirejs.config === 'function') {
                window.requirejs.config({ paths: { peftsharpPlotly: src.replace(/\.js$/, '') } });
                window.requirejs(['peftsharpPlotly'], function (P) { window.Plotly = P; draw(P); });
                return;
              }
              var s = document.createElement('script'); s.src = src; s.onload = function () { draw(window.Plotly); };
              document.head.appendChild(s);
            })();
            </script>
            """;
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
        var name = assembly.GetManifestResourceNames().FirstOrDefault(n => n.StartsWith("Plotly.NET.plotly-", StringComparison.Ordinal) && n.EndsWith(".min.js", StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"Plotly.NET {assembly.GetName().Version} does not embed plotly.js.");
        using var stream = assembly.GetManifestResourceStream(name)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    // The CDN address Plotly.NET itself uses for its plotly.js version (a live notebook loads it from there).
    static string PlotlySource()
    {
        var reference = DisplayOptions.getPlotlyReference(DisplayOptions.initCDNOnly());
        return reference is PlotlyJSReference.CDN cdn ? cdn.Item : "plotly.min.js";
    }
}

using System.Net;
using System.Reflection;
using System.Text;
using Markdig;
using Microsoft.DotNet.Interactive.Documents;

namespace PeftSharp.Lab.Notebooks;

/// <summary>
/// One self-contained HTML page for a run: a summary table, then every notebook's markdown, code and outputs. plotly.js
/// is included once at the top, so the charts (drawn by the extension's fragments, which use a page's global Plotly)
/// render with no network.
/// </summary>
static class HtmlReport
{
    public static string Build(IReadOnlyList<NotebookResult> results, TimeSpan total)
    {
        var html = new StringBuilder();
        html.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>PeftSharp notebooks</title>\n<style>")
            .Append("""
                body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
                pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:85%}
                .cell{margin:1em 0}.out{border-left:3px solid #ddd;padding-left:.8em;margin:.4em 0}
                .err{color:#b00020;white-space:pre-wrap}.ok{color:#1a7f37}.bad{color:#b00020}
                table.runs td,table.runs th{padding:2px 10px;text-align:left}
                """).Append("</style>\n")
            .Append("<script type=\"text/javascript\">").Append(PlotlyJs()).Append("</script>\n</head><body>\n");
        html.Append("<h1>PeftSharp notebooks</h1>\n")
            .Append($"<p>{results.Count(r => r.Succeeded)} of {results.Count} notebooks ran without error in {total.TotalSeconds:0.0} s · {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC</p>\n")
            .Append("<table class=\"runs\"><tr><th>notebook</th><th>cells</th><th>time</th><th>result</th></tr>\n");
        foreach (var r in results)
            html.Append($"<tr><td><a href=\"#{Anchor(r.Path)}\">{E(r.Path)}</a></td><td>{r.Cells.Count}/{r.CodeCells}</td><td>{r.Duration.TotalSeconds:0.0} s</td>")
                .Append(r.Succeeded ? "<td class=\"ok\">ok</td>" : $"<td class=\"bad\">{E(r.FailureText ?? "failed")}</td>").Append("</tr>\n");
        html.Append("</table>\n");

        var pipeline = new MarkdownPipelineBuilder().UseAdvancedExtensions().Build();
        foreach (var r in results)
        {
            html.Append($"<section id=\"{Anchor(r.Path)}\"><h2>{E(r.Path)}</h2>\n");
            if (r.Executed is null)
            {
                html.Append($"<p class=\"err\">{E(r.Error ?? "not run")}</p></section>\n");
                continue;
            }
            foreach (var cell in r.Executed.Elements)
            {
                if (cell.KernelName is "markdown" or "md")
                {
                    html.Append("<div class=\"cell md\">").Append(Markdown.ToHtml(cell.Contents, pipeline)).Append("</div>\n");
                    continue;
                }
                html.Append("<div class=\"cell\"><pre><code>").Append(E(cell.Contents)).Append("</code></pre>\n");
                foreach (var output in cell.Outputs) html.Append("<div class=\"out\">").Append(Output(output)).Append("</div>\n");
                html.Append("</div>\n");
            }
            html.Append("</section>\n");
        }
        return html.Append("</body></html>\n").ToString();
    }

    static string Output(InteractiveDocumentOutputElement output) => output switch
    {
        TextElement text => $"<pre>{E(text.Text)}</pre>",
        ErrorElement error => $"<div class=\"err\">{E(error.ErrorValue)}</div>",
        DisplayElement display => Data(display.Data),
        ReturnValueElement value => Data(value.Data),
        _ => "",
    };

    // The extension's load message carries plotly.js for notebook front ends; the report's head already has it.
    static readonly System.Text.RegularExpressions.Regex PlotlyLoader =
        new("<script[^>]*data-peftsharp-plotly[^>]*>.*?</script>", System.Text.RegularExpressions.RegexOptions.Singleline | System.Text.RegularExpressions.RegexOptions.Compiled);

    static string Data(IDictionary<string, object> data) =>
        data.TryGetValue("text/html", out var html) ? PlotlyLoader.Replace(Text(html), "")
        : data.TryGetValue("text/plain", out var plain) ? $"<pre>{E(Text(plain))}</pre>"
        : "";

    // .ipynb data may be a string or a list of lines.
    static string Text(object value) => value switch
    {
        string s => s,
        IEnumerable<object> lines => string.Concat(lines),
        _ => value.ToString() ?? "",
    };

    static string E(string text) => WebUtility.HtmlEncode(text);

    static string Anchor(string path) => "nb-" + string.Concat(path.Select(c => char.IsLetterOrDigit(c) ? c : '-'));

    /// <summary>The plotly.js that Plotly.NET embeds (the same version the notebooks' charts ask for).</summary>
    static string PlotlyJs()
    {
        var assembly = typeof(Plotly.NET.GenericChart).Assembly;
        var name = assembly.GetManifestResourceNames().First(n => n.StartsWith("Plotly.NET.plotly-", StringComparison.Ordinal) && n.EndsWith(".min.js", StringComparison.Ordinal));
        using var reader = new StreamReader(assembly.GetManifestResourceStream(name)!);
        return reader.ReadToEnd();
    }
}

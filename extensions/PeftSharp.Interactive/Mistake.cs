using System.Net;
using System.Runtime.CompilerServices;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.Formatting;

namespace PeftSharp.Interactive;

/// <summary>
/// Shows what a mistake looks like without failing the notebook: runs a cell's code (a <c>#!peft</c> command or C#) in the
/// kernel and displays the exact message its failure produces. Notebooks use it for the errors they demonstrate because
/// not every client honours Jupyter's <c>raises-exception</c> tag (dotnet repl ignores it and exits non-zero; VS Code's
/// Run All stops at the first failing cell). If the code does not fail, the cell fails instead: the mistake the reader is
/// shown is always a real one.
/// </summary>
public static class Mistake
{
    // Set while Show runs its code: #!peft hands its failure message here instead of failing the cell. (A failing child
    // command fails the whole cell in .NET Interactive, so the message cannot be caught after the fact.)
    static readonly AsyncLocal<StrongBox<string?>?> Expected = new();

    /// <summary>Runs <paramref name="code"/> (a <c>#!peft</c> command) in the current kernel, displays the message its
    /// failure produces, and returns it.</summary>
    public static async Task<string> Show(string code)
    {
        ArgumentNullException.ThrowIfNull(code);
        var context = KernelInvocationContext.Current
            ?? throw new InvalidOperationException("Mistake.Show runs inside a notebook cell (it sends the code to that cell's kernel).");
        var kernel = context.HandlingKernel ?? throw new InvalidOperationException("Mistake.Show found no kernel handling this cell.");
        var captured = new StrongBox<string?>();
        Expected.Value = captured;
        try
        {
            await kernel.RootKernel.SendAsync(new SubmitCode(code, kernel.Name));
        }
        finally
        {
            Expected.Value = null;
        }
        var message = captured.Value?.Trim() ?? throw new InvalidOperationException($"'{code}' was shown as a mistake but ran without an error.");
        KernelInvocationContextExtensions.Display(context, new PeftHtml(Html(code, message)), HtmlFormatter.MimeType);
        return message;
    }

    /// <summary>Called where <c>#!peft</c> would fail a cell: true (and the message kept) when <see cref="Show"/> is
    /// demonstrating this failure, so the handler returns instead of failing.</summary>
    internal static bool Capture(string message)
    {
        if (Expected.Value is not { } box) return false;
        box.Value = message;
        return true;
    }

    static string Html(string code, string message) =>
        "<div class=\"peftsharp-mistake\" style=\"border-left:3px solid #b00020;padding-left:.8em;margin:4px 0\">" +
        $"<div style=\"color:#555\">this fails, on purpose: <code>{WebUtility.HtmlEncode(code)}</code></div>" +
        $"<pre style=\"color:#b00020;white-space:pre-wrap;margin:4px 0\">{WebUtility.HtmlEncode(message)}</pre></div>";
}

namespace PeftSharp.Interactive;

/// <summary>
/// A piece of ready HTML to display as is. The extension displays through this type (its formatter writes the text
/// unchanged) rather than ASP.NET's HtmlString, so it does not depend on the exact Microsoft.AspNetCore.Html version a
/// host ships.
/// </summary>
public sealed record PeftHtml(string Html)
{
    public override string ToString() => Html;
}

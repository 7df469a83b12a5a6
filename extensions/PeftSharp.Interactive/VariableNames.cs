using Microsoft.CodeAnalysis.CSharp;

namespace PeftSharp.Interactive;

/// <summary>
/// Checks a name a magic command is about to declare in the C# kernel (<c>--as</c>). The kernel declares it by compiling
/// C#, so a name C# rejects (<c>1abc</c>, <c>class</c>, <c>a.b</c>) failed with a compiler trace after the model had
/// already been wrapped, leaving an adapter no variable held. Checked before anything changes.
/// </summary>
public static class VariableNames
{
    /// <summary>Returns <paramref name="name"/> when it can name a C# variable; throws a message saying why not otherwise.</summary>
    public static string Check(string name, string parameter = "--as")
    {
        ArgumentNullException.ThrowIfNull(name);
        string? problem =
            name.Length == 0 ? "is empty"
            : SyntaxFacts.GetKeywordKind(name) != SyntaxKind.None ? "is a C# keyword"
            // Contextual keywords are identifiers elsewhere, but a script's top level reads 'await' as the operator.
            : SyntaxFacts.GetContextualKeywordKind(name) == SyntaxKind.AwaitKeyword ? "is a C# contextual keyword that a notebook cannot declare"
            : name == "_" ? "is C#'s discard, which cannot hold a value"
            : !SyntaxFacts.IsValidIdentifier(name) ? Why(name)
            : null;
        if (problem is null) return name;
        throw new ArgumentException(
            $"{parameter} '{name}' {problem}, so it cannot name a C# variable; nothing was changed. " +
            $"Use a letter or '_' followed by letters, digits or '_' (e.g. {Suggest(name)}).");
    }

    static string Why(string name) =>
        char.IsDigit(name[0]) ? "starts with a digit"
        : name.FirstOrDefault(c => !(char.IsLetterOrDigit(c) || c == '_')) is var c and not '\0'
            ? $"holds '{(char.IsWhiteSpace(c) || char.IsControl(c) ? $"U+{(int)c:X4}" : c.ToString())}'"
            : "is not a C# identifier";

    // A nearby valid name: letters, digits and '_' kept, a leading digit or keyword prefixed, so the hint is usable as is.
    static string Suggest(string name)
    {
        var kept = new string(name.Where(c => char.IsLetterOrDigit(c) || c == '_').ToArray());
        if (kept.Length == 0 || kept == "_") return "peft2";
        if (char.IsDigit(kept[0]) || SyntaxFacts.GetKeywordKind(kept) != SyntaxKind.None || SyntaxFacts.GetContextualKeywordKind(kept) != SyntaxKind.None)
            kept = "my" + char.ToUpperInvariant(kept[0]) + kept[1..];
        return SyntaxFacts.IsValidIdentifier(kept) ? kept : "peft2";
    }
}

using System.Globalization;
using System.Reflection;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.Directives;
using PeftSharp.Adapters;
using PeftSharp.Methods;

namespace PeftSharp.Interactive;

/// <summary>
/// Checks on the text of a <c>#!peft</c> line that the kernel's directive parser does not make: it drops a second word
/// after a value (<c>--method bitfit lora</c> ran bitfit), a parameter without a value (<c>--rank</c> at the end took the
/// default), an empty value (<c>--method ""</c>), lets an unclosed quote swallow the rest of the line, and routes an
/// unknown subcommand without parameters (<c>#!peft lora</c>) to the help. Each of these now fails with a message.
/// </summary>
static class DirectiveInput
{
    // Method options that are numbers: double.Parse reads "NaN", "Infinity" and 1e999 (as infinity), which no option means.
    static readonly HashSet<string> NumericOptions =
        MethodList.All.SelectMany(m => m.Parameters).Where(p => p.Type is "int" or "float").Select(p => "--" + p.Name).ToHashSet();

    /// <summary>Throws when a double quote is not closed.</summary>
    public static void CheckQuotes(string text)
    {
        if (text.Where((c, i) => c == '"' && (i == 0 || text[i - 1] != '\\')).Count() % 2 == 1)
            throw new ArgumentException($"a quote is not closed in '{text.Trim()}'; put a \" at both ends of a value (--targets \"re:lin.*\").");
    }

    /// <summary>Throws unless every word after the subcommand is a known --name, a flag, or the one value of the --name before it.</summary>
    public static void CheckValues(IReadOnlyList<string> words, KernelActionDirective directive)
    {
        var flags = directive.Parameters.Where(p => p.Flag).Select(p => p.Name).ToHashSet();
        int start = words.ToList().IndexOf(directive.Name);
        if (start < 0) return;
        for (int i = start + 1; i < words.Count; i++)
        {
            var word = words[i];
            if (!word.StartsWith("--", StringComparison.Ordinal))
                throw new ArgumentException($"'{word}' follows '{words[i - 1]}' but belongs to no parameter: each --name takes one value; " +
                                            "quote a value that holds spaces (--targets \"a b\") and separate list items with commas (--targets q,v).");
            if (flags.Contains(word)) continue;
            if (i + 1 == words.Count || words[i + 1].StartsWith("--", StringComparison.Ordinal) || words[i + 1] == "\"\"")
                throw new ArgumentException($"{word} needs a value ({directive.Parameters.FirstOrDefault(p => p.Name == word)?.Description ?? "see #!peft"}).");
            var value = words[++i];
            if (NumericOptions.Contains(word) && double.TryParse(value.Trim('"'), NumberStyles.Float, CultureInfo.InvariantCulture, out var number) && !double.IsFinite(number))
                throw new ArgumentException($"{word} needs a finite number, not '{value}'.");
        }
    }

    /// <summary>The message for <c>#!peft word</c> when word is no subcommand; null for <c>#!peft</c> alone.</summary>
    public static string? UnknownSubcommand(KernelCommand command, Func<string, IEnumerable<string>> words, IReadOnlyList<string> subcommands)
    {
        var node = command.GetType().GetProperty("DirectiveNode", BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)?.GetValue(command);
        if (node?.GetType().GetProperty("Text")?.GetValue(node) is not string text) return null;
        var extra = words(text).SkipWhile(w => w != PeftMagicCommands.DirectiveName).Skip(1).FirstOrDefault();
        if (extra is null) return null;
        var closest = subcommands.OrderBy(s => TargetMatcher.Levenshtein(s, extra)).First();
        return $"#!peft: unknown subcommand '{extra}'{(TargetMatcher.Levenshtein(closest, extra) <= 3 ? $" (did you mean {closest}?)" : "")}; " +
               $"the subcommands are {string.Join(", ", subcommands)}.";
    }
}

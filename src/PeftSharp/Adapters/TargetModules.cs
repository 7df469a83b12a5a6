using System.Collections;
using System.Runtime.CompilerServices;

namespace PeftSharp.Adapters;

/// <summary>
/// Which modules an adapter goes into, with Hugging Face PEFT's meaning of <c>target_modules</c>:
/// a single string is a regular expression that must match the whole dotted module path; a list matches a path
/// that equals an entry or ends with <c>"." + entry</c>; <c>all-linear</c> takes every Linear except the output head.
/// </summary>
/// <remarks>A collection expression makes a list: <c>TargetModules = ["q", "v"]</c>.</remarks>
[CollectionBuilder(typeof(TargetModules), nameof(Create))]
public sealed record TargetModules : IEnumerable<string>
{
    public const string AllLinearShorthand = "all-linear";

    TargetModules(string? pattern, IReadOnlyList<string>? names)
    {
        Pattern = pattern;
        Names = names;
    }

    /// <summary>The regular expression (full match), when given as one string.</summary>
    public string? Pattern { get; }

    /// <summary>The names (exact or dotted suffix), when given as a list.</summary>
    public IReadOnlyList<string>? Names { get; }

    public bool IsAllLinear => Pattern is not null && string.Equals(Pattern, AllLinearShorthand, StringComparison.OrdinalIgnoreCase);

    /// <summary>A regular expression that must match the whole module path (PEFT: <c>target_modules="..."</c>).</summary>
    public static TargetModules Regex(string pattern)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(pattern);
        return new TargetModules(pattern, null);
    }

    /// <summary>Module names matched exactly or as a dotted suffix (PEFT: <c>target_modules=[...]</c>).</summary>
    public static TargetModules List(params IEnumerable<string> names)
    {
        var list = names.ToArray();
        if (list.Length == 0 || list.Any(string.IsNullOrWhiteSpace))
            throw new ArgumentException("A target list needs at least one non-empty module name, e.g. [\"query\", \"value\"].", nameof(names));
        return new TargetModules(null, list);
    }

    /// <summary>Every Linear module except the model's output head.</summary>
    public static TargetModules AllLinear { get; } = new(AllLinearShorthand, null);

    /// <summary>Parses the command-line / magic-command form: "all-linear", "re:&lt;regex&gt;", or "a,b,c".</summary>
    public static TargetModules Parse(string text)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(text);
        text = text.Trim();
        if (string.Equals(text, AllLinearShorthand, StringComparison.OrdinalIgnoreCase)) return AllLinear;
        if (text.StartsWith("re:", StringComparison.Ordinal)) return Regex(text[3..]);
        return List(text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    public static implicit operator TargetModules(string[] names) => List(names);

    /// <summary>For collection expressions: <c>["q", "v"]</c> is <see cref="List"/>.</summary>
    public static TargetModules Create(ReadOnlySpan<string> names) => List(names.ToArray());

    /// <summary>The names of a list, or the one pattern.</summary>
    public IEnumerator<string> GetEnumerator() => (Names ?? [Pattern!]).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public override string ToString() => Pattern ?? string.Join(",", Names!);

    public bool Equals(TargetModules? other) =>
        other is not null && Pattern == other.Pattern &&
        (Names is null ? other.Names is null : other.Names is not null && Names.SequenceEqual(other.Names));

    public override int GetHashCode() => HashCode.Combine(Pattern, Names is null ? 0 : string.Join("\u0001", Names).GetHashCode());
}

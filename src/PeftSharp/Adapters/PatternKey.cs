using System.Text.RegularExpressions;

namespace PeftSharp.Adapters;

/// <summary>PEFT's per-module overrides (<c>rank_pattern</c>, <c>alpha_pattern</c>): an exact module path wins, else the
/// first key that matches the end of the path after a dot (<c>re.match(r"(.*\.)?(key)$", path)</c>).</summary>
public static class PatternKey
{
    /// <summary>Throws naming <paramref name="field"/> and the key when a key is neither a module name nor a valid regex.</summary>
    public static void Validate<T>(IReadOnlyDictionary<string, T>? pattern, string field)
    {
        foreach (var key in pattern?.Keys ?? [])
        {
            try
            {
                _ = new Regex($@"^(?:.*\.)?(?:{key})$");
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"{field}['{key}'] is not a valid regular expression ({e.Message}); its keys are module names or regexes such as \"layers\\.0\\.q\".", field);
            }
        }
    }

    public static T Resolve<T>(IReadOnlyDictionary<string, T>? pattern, string path, T fallback)
    {
        if (pattern is null || pattern.Count == 0) return fallback;
        if (pattern.TryGetValue(path, out var exact)) return exact;
        foreach (var (key, value) in pattern)
            if (Regex.IsMatch(path, $@"^(?:.*\.)?(?:{key})$")) return value;
        return fallback;
    }
}

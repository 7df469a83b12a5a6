using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>What a target specification picks in a model, before anything changes.</summary>
/// <param name="Matched">Paths that will receive the adapter.</param>
/// <param name="Excluded">Paths the targets matched but <c>exclude_modules</c> or the layer filter removed.</param>
/// <param name="Unmatched">Every other module path that could hold an adapter (Linear, Embedding, ...).</param>
public sealed record TargetSelection(IReadOnlyList<string> Matched, IReadOnlyList<string> Excluded, IReadOnlyList<string> Unmatched);

/// <summary>Hugging Face PEFT's target-module semantics (peft.tuners.tuners_utils.check_target_module_exists).</summary>
public static class TargetMatcher
{
    /// <summary>Names that an <c>all-linear</c> selection treats as the output head when the model does not say.</summary>
    public static readonly IReadOnlyList<string> OutputHeadNames = ["lm_head", "head", "classifier", "score", "cls", "output_layer"];

    /// <summary>
    /// True when <paramref name="path"/> is a target: a regex (full match) for a string, an exact name or dotted
    /// suffix for a list; with a list, <c>layers_to_transform</c> keeps only paths whose layer index (the number after
    /// <c>layers_pattern</c>, or after any segment when no pattern is given) is listed. As in PEFT, the layer filter
    /// applies to list targets only: a regex is expected to say its layers itself.
    /// </summary>
    public static bool IsTarget(TargetModules targets, string path, IReadOnlyList<int>? layersToTransform = null, IReadOnlyList<string>? layersPattern = null)
    {
        if (targets.Pattern is not null) return FullMatch(targets.Pattern, path);
        bool found = targets.Names!.Any(name => path == name || path.EndsWith("." + name, StringComparison.Ordinal));
        if (!found || layersToTransform is null || layersToTransform.Count == 0) return found;
        var index = LayerIndex(path, layersPattern);
        return index is int i && layersToTransform.Contains(i);
    }

    /// <summary>PEFT's <c>exclude_modules</c>: a regex (full match) or names matched exactly or as a dotted suffix.</summary>
    public static bool IsExcluded(TargetModules? exclude, string path) =>
        exclude is not null && (exclude.Pattern is not null
            ? FullMatch(exclude.Pattern, path)
            : exclude.Names!.Any(name => path == name || path.EndsWith("." + name, StringComparison.Ordinal)));

    /// <summary>The layer index in a path such as <c>encoder.layer.3.attention.self.query</c> (3), or null.</summary>
    /// <remarks>PEFT's expressions (<c>.*\.[^.]*\.(\d+)\.</c>, <c>.*\.{pattern}\.(\d+)\.</c>) need a segment before the
    /// layer list, so they miss a model whose layers sit at the top (<c>layers.3.attn.q</c>); the prefix is optional
    /// here. Every path PEFT matches gets the same index.</remarks>
    public static int? LayerIndex(string path, IReadOnlyList<string>? layersPattern)
    {
        Match m;
        if (layersPattern is null || layersPattern.Count == 0)
        {
            m = Regex.Match(path, @"^(?:.*\.)?[^.]*\.(\d+)\.");
            return m.Success ? int.Parse(m.Groups[1].Value) : null;
        }
        foreach (var pattern in layersPattern)
        {
            m = Regex.Match(path, $@"^(?:.*\.)?{pattern}\.(\d+)\.");
            if (m.Success) return int.Parse(m.Groups[1].Value);
        }
        return null;
    }

    /// <summary>
    /// Picks the modules of <paramref name="model"/> an adapter with <paramref name="config"/> goes into. Only modules
    /// for which <paramref name="canHold"/> is true are candidates. Throws when nothing matches, naming the targets and
    /// the module names that look closest, so a typo is easy to see.
    /// </summary>
    public static TargetSelection Select(Module model, AdapterConfig config, Func<Module, bool> canHold)
    {
        var candidates = AdaptableModules(model).Where(p => canHold(p.Module)).ToList();
        var targets = config.TargetModules ?? throw new ArgumentException(
            $"{config.GetType().Name}.TargetModules is not set: name the modules to adapt, e.g. [\"q\", \"v\"], a regex, or \"all-linear\".",
            nameof(config));

        if (targets.IsAllLinear)
        {
            var head = OutputHeadPath(model, candidates.Select(c => c.Path));
            var linear = candidates.Where(c => c.Module is TorchSharp.Modules.Linear && c.Path != head).Select(c => c.Path).ToArray();
            if (linear.Length == 0)
                throw new ArgumentException($"target_modules \"all-linear\" found no Linear module in {model.GetName()} (besides the output head).");
            targets = TargetModules.List(linear);
        }

        var matched = new List<string>();
        var excluded = new List<string>();
        var unmatched = new List<string>();
        foreach (var (path, _) in candidates)
        {
            bool isTarget = IsTarget(targets, path, config.LayersToTransform, config.LayersPattern);
            bool isTargetIgnoringLayers = isTarget || IsTarget(targets, path);
            if (isTarget && !IsExcluded(config.ExcludeModules, path)) matched.Add(path);
            else if (isTargetIgnoringLayers) excluded.Add(path);
            else unmatched.Add(path);
        }

        // Modules that match but cannot hold this adapter are an error, not a silent skip (PEFT raises too).
        var unsupported = AdaptableModules(model)
            .Where(p => !canHold(p.Module) && IsTarget(targets, p.Path, config.LayersToTransform, config.LayersPattern)
                        && !IsExcluded(config.ExcludeModules, p.Path) && !HasMatchedAncestorOrDescendant(p.Path, matched))
            .ToList();
        if (unsupported.Count > 0 && matched.Count == 0)
        {
            var first = unsupported[0];
            throw new ArgumentException(
                $"target_modules {Describe(config.TargetModules!)} matched '{first.Path}', a {first.Module.GetType().Name}, which {config.MethodName} cannot adapt. " +
                $"{config.MethodName} adapts: {config.SupportedLayerTypes}. Choose such modules, e.g. {string.Join(", ", candidates.Take(4).Select(c => c.Path))}.");
        }

        if (matched.Count == 0)
        {
            if (excluded.Count > 0)
                throw new ArgumentException(
                    $"target_modules {Describe(config.TargetModules!)} matched {string.Join(", ", excluded.Take(5))}, but exclude_modules / layers_to_transform removed all of them.");
            throw new ArgumentException(NothingMatchedMessage(model, config.TargetModules!, candidates.Select(c => c.Path).ToList()));
        }
        return new TargetSelection(matched, excluded, unmatched);
    }

    static bool HasMatchedAncestorOrDescendant(string path, List<string> matched) =>
        matched.Any(m => path.StartsWith(m + ".", StringComparison.Ordinal) || m.StartsWith(path + ".", StringComparison.Ordinal));

    /// <summary>Every (path, module) of the model except the root and the insides of adapter wrappers.</summary>
    public static IEnumerable<(string Path, Module Module)> AdaptableModules(Module model)
    {
        var wrappers = new List<string>();
        foreach (var (path, module) in model.named_modules())
        {
            if (path.Length == 0) continue;
            if (wrappers.Any(w => path.StartsWith(w + ".", StringComparison.Ordinal))) continue;
            if (module is ModelAdapterDict)
            {
                wrappers.Add(path);   // adapters' own modules are not targets
                continue;
            }
            if (module is AdapterLayer or ModulesToSaveWrapper)
            {
                wrappers.Add(path);
                yield return (path, module is AdapterLayer layer ? layer.BaseLayer : ((ModulesToSaveWrapper)module).OriginalModule);
                continue;
            }
            yield return (path, module);
        }
    }

    /// <summary>The output head's path: the model's own answer when it implements <see cref="IHasOutputHead"/>, else the
    /// last module whose name is one of <see cref="OutputHeadNames"/>.</summary>
    public static string? OutputHeadPath(Module model, IEnumerable<string> paths)
    {
        if (model is IHasOutputHead declared) return declared.OutputHeadPath;
        return paths.LastOrDefault(p => OutputHeadNames.Contains(p[(p.LastIndexOf('.') + 1)..]));
    }

    static string NothingMatchedMessage(Module model, TargetModules targets, IReadOnlyList<string> candidates)
    {
        var wanted = targets.Names ?? [targets.Pattern!];
        var leafNames = candidates.Select(p => p[(p.LastIndexOf('.') + 1)..]).Distinct().ToList();
        var similar = wanted
            .SelectMany(w => leafNames.Concat(candidates)
                .Select(n => (Name: n, Distance: Levenshtein(w.ToLowerInvariant(), n.ToLowerInvariant()), Contains: n.Contains(w, StringComparison.OrdinalIgnoreCase) || w.Contains(n, StringComparison.OrdinalIgnoreCase)))
                .Where(x => x.Contains || x.Distance <= Math.Max(2, w.Length / 3))
                .OrderBy(x => x.Distance))
            .Select(x => x.Name).Distinct().Take(6).ToList();
        var hint = similar.Count > 0 ? $" Similar module names: {string.Join(", ", similar)}." : "";
        return $"target_modules {Describe(targets)} matched no module of {model.GetName()}.{hint} " +
               $"Modules that can be adapted: {string.Join(", ", leafNames.Take(12))}{(leafNames.Count > 12 ? ", ..." : "")} " +
               $"(full paths such as {string.Join(", ", candidates.Take(3))}).";
    }

    static string Describe(TargetModules targets) =>
        targets.Names is not null ? "[" + string.Join(", ", targets.Names.Select(n => $"'{n}'")) + "]" : $"'{targets.Pattern}'";

    static bool FullMatch(string pattern, string path) => Regex.IsMatch(path, $"^(?:{pattern})$");

    /// <summary>Edit distance between two names (for "did you mean" hints).</summary>
    public static int Levenshtein(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}

/// <summary>A model that names its output head, so <c>all-linear</c> leaves it out (PEFT asks
/// <c>get_output_embeddings()</c> for the same purpose).</summary>
public interface IHasOutputHead
{
    string? OutputHeadPath { get; }
}

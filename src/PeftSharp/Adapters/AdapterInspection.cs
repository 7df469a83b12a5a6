using PeftSharp.IO;
using PeftSharp.Methods.LowRank;

namespace PeftSharp.Adapters;

/// <summary>One adapted module as an adapter directory describes it.</summary>
public sealed record InspectedModule(string Path, int? Rank, IReadOnlyList<SafeTensorInfo> Tensors)
{
    public long Parameters => Tensors.Sum(t => t.ElementCount);
}

/// <summary>What an adapter directory holds, read without a model: its config, its tensors grouped by module, and the
/// problems found (a directory with problems would fail to load).</summary>
public sealed record AdapterInspection(
    string Directory,
    AdapterConfig Config,
    string Method,
    IReadOnlyList<InspectedModule> Modules,
    IReadOnlyList<SafeTensorInfo> OtherTensors,
    IReadOnlyDictionary<string, string> Metadata,
    IReadOnlyList<string> Problems)
{
    public long Parameters => Modules.Sum(m => m.Parameters) + OtherTensors.Sum(t => t.ElementCount);

    public IReadOnlyList<int> Ranks => Modules.Select(m => m.Rank).OfType<int>().Distinct().Order().ToList();

    public bool IsValid => Problems.Count == 0;

    /// <summary>Where a module path ends and a per-module adapter tensor's name begins, for every method's layout
    /// (<c>.lora_A.weight</c>, <c>.ia3_l</c>, <c>.adapter_down.weight</c>, ...). Keys without one (prompt embeddings,
    /// a shared PHM rule, an invertible coupling) are the adapter's model-level tensors.</summary>
    public static readonly IReadOnlyList<string> TensorMarkers =
        [".lora_", ".ia3_l", ".adapter_", ".bitfit_bias", ".ln_tuning_layers.", ".scalearn_", ".fusion_"];

    /// <summary>Reads and checks <paramref name="directory"/>; throws <see cref="AdapterFileException"/> only when a
    /// file cannot be read at all, and lists inconsistencies in <see cref="Problems"/>.</summary>
    public static AdapterInspection Read(string directory)
    {
        var config = AdapterFiles.ReadConfig(directory);
        var (tensors, metadata) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        var problems = new List<string>();
        var other = new List<SafeTensorInfo>();
        var byModule = new Dictionary<string, List<SafeTensorInfo>>();
        foreach (var t in tensors)
        {
            if (config is PeftSharp.Methods.Activation.PromptLearningConfig && t.Name == PeftSharp.Methods.Activation.PromptLearningConfig.FileKey)
            {
                other.Add(t);   // PEFT's prompt-learning tensor has no module path
                continue;
            }
            if (!t.Name.StartsWith(AdapterFiles.KeyPrefix, StringComparison.Ordinal))
            {
                problems.Add($"tensor '{t.Name}' does not start with '{AdapterFiles.KeyPrefix}' as PEFT's keys do.");
                other.Add(t);
                continue;
            }
            var key = t.Name[AdapterFiles.KeyPrefix.Length..];
            var marker = TensorMarkers.Select(m => key.IndexOf(m, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
            if (marker < 0)
            {
                other.Add(t);
                continue;
            }
            var module = key[..marker];
            if (!byModule.TryGetValue(module, out var list)) byModule[module] = list = [];
            list.Add(t);
        }

        var modules = new List<InspectedModule>();
        foreach (var (path, list) in byModule)
        {
            int? rank = null;
            if (config is LoraConfig lora)
            {
                var a = list.FirstOrDefault(t => t.Name.EndsWith(".lora_A.weight") || t.Name.EndsWith(".lora_embedding_A"));
                var b = list.FirstOrDefault(t => t.Name.EndsWith(".lora_B.weight") || t.Name.EndsWith(".lora_embedding_B"));
                if (a is null || b is null) problems.Add($"'{path}' has {(a is null ? "no lora_A" : "no lora_B")}.");
                else
                {
                    rank = (int)a.Shape[0];
                    if (a.Shape.Length != 2 || b.Shape.Length != 2 || b.Shape[1] != rank)
                        problems.Add($"'{path}': lora_A [{string.Join(", ", a.Shape)}] and lora_B [{string.Join(", ", b.Shape)}] do not share a rank.");
                    int expected = lora.RankAt(path) * (lora.InitLoraWeights.ChangesBaseWeights ? 2 : 1);
                    if (rank != expected)
                        problems.Add($"'{path}' has rank {rank} but adapter_config.json says {expected} (r / rank_pattern).");
                    if (lora.UseDora && !list.Any(t => t.Name.EndsWith(".lora_magnitude_vector")) && a.Name.EndsWith(".lora_A.weight"))
                        problems.Add($"'{path}' has no lora_magnitude_vector although use_dora is true.");
                }
                if (lora.TargetModules is { } targets && !targets.IsAllLinear
                    && !TargetMatcher.IsTarget(targets, path, lora.LayersToTransform, lora.LayersPattern))
                    problems.Add($"'{path}' is not matched by target_modules {targets}.");
            }
            modules.Add(new InspectedModule(path, rank, list));
        }
        string method = config is LoraConfig { UseDora: true } ? "DoRA (LORA, use_dora)" : config.PeftType;
        return new AdapterInspection(directory, config, method, modules, other, metadata, problems);
    }
}

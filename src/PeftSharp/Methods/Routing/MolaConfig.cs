using System.Globalization;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// MoLA (Gao et al. 2024, "Higher Layers Need More LoRA Experts", §3, Eq. 1-3): each targeted Linear holds E_l LoRA
/// experts (B_i A_i) and a router W_r ∈ R^{E_l×in}; for a token x, g = softmax(W_r x), the top-k experts keep their
/// gates renormalised, w_i = g_i / Σ_{j∈top-k} g_j (0 for the others), and y = W x + Σ_{i∈top-k} w_i · s·B_i A_i x,
/// s = alpha / r. The expert count per layer follows <see cref="ExpertAllocation"/> (the paper's MoLA-□ uniform,
/// MoLA-△ triangle with more experts in lower layers, MoLA-▽ inverted triangle with more in higher layers, MoLA-◇
/// hourglass with more at both ends) or an explicit <see cref="ExpertsPerLayer"/> list; k_l = min(top_k, E_l).
/// Training adds the load-balancing loss (<see cref="Mola.LoadBalancingLoss"/>) through <c>Trainer.AddLossTerm</c>.
/// This library's layout (<c>peft_type</c> "MOLA"): per module <c>mola_router.weight</c> (E_l, in),
/// <c>mola_A</c> (E_l, r, in), <c>mola_B</c> (E_l, out, r).
/// </summary>
public sealed record MolaConfig : AdapterConfig
{
    /// <summary>The rank of every expert.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of each LoRA expert", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary>alpha, with s = alpha / r.</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: scale s = alpha / r")]
    public double LoraAlpha { get; init; } = 16;

    /// <summary>The mean number of experts per layer: the allocation keeps the total at num_experts × layers.</summary>
    [JsonPropertyName("num_experts"), Option("experts", "num_experts: experts per layer on average (the allocation keeps the total)", Min = 1, Max = 1024)]
    public int NumExperts { get; init; } = 4;

    /// <summary>How many experts each token uses (k_l = min(top_k, E_l)).</summary>
    [JsonPropertyName("top_k"), Option("top-k", "top_k: experts per token, gates renormalised over them", Min = 1, Max = 1024)]
    public int TopK { get; init; } = 2;

    /// <summary>How the experts are spread over the layers: uniform, triangle (more in lower layers), inverted_triangle
    /// (more in higher layers), hourglass (more at both ends).</summary>
    [JsonPropertyName("expert_allocation"), Option("allocation", "expert_allocation: uniform | triangle | inverted_triangle | hourglass")]
    public string ExpertAllocation { get; init; } = "uniform";

    /// <summary>Explicit experts per layer, lowest layer first (overrides <see cref="ExpertAllocation"/>); one count per
    /// distinct layer index among the targets.</summary>
    [JsonPropertyName("experts_per_layer"), Option("experts-per-layer", "experts_per_layer: explicit counts, lowest layer first (e.g. 1,1,3,3)")]
    public IReadOnlyList<int>? ExpertsPerLayer { get; init; }

    public static readonly IReadOnlyList<string> Allocations = ["uniform", "triangle", "inverted_triangle", "hourglass"];

    public override string MethodName => "mola";

    public override string PeftType => "MOLA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override void Validate()
    {
        base.Validate();
        if (!Allocations.Contains(ExpertAllocation))
            throw new ArgumentOutOfRangeException(nameof(ExpertAllocation), ExpertAllocation, $"expert_allocation must be one of {string.Join(", ", Allocations)}.");
        if (ExpertsPerLayer is { } list && (list.Count == 0 || list.Any(n => n < 1)))
            throw new ArgumentOutOfRangeException(nameof(ExpertsPerLayer), $"experts_per_layer needs one count of 1 or more per layer; got [{string.Join(", ", list)}].");
    }

    /// <summary>
    /// Experts per layer for <paramref name="layers"/> layers (lowest first): the total num_experts × layers is shared in
    /// proportion to the pattern's weight for the layer's quarter of the depth (uniform 1-1-1-1, triangle 4-3-2-1,
    /// inverted triangle 1-2-3-4, hourglass 2-1-1-2; with 32 layers and a mean of 5, triangle is the paper's 8-6-4-2 by
    /// quarter), rounded by largest remainder so the total is exact; a layer left with none takes one from the largest.
    /// </summary>
    public IReadOnlyList<int> Allocate(int layers)
    {
        if (ExpertsPerLayer is { } list)
            return list.Count == layers ? list
                : throw new ArgumentException($"experts_per_layer has {list.Count} counts but the targets span {layers} layer(s); give one count per layer, lowest first.", nameof(ExpertsPerLayer));
        double[] quarter = ExpertAllocation switch
        {
            "triangle" => [4, 3, 2, 1],
            "inverted_triangle" => [1, 2, 3, 4],
            "hourglass" => [2, 1, 1, 2],
            _ => [1, 1, 1, 1],
        };
        var weights = Enumerable.Range(0, layers).Select(i => quarter[4 * i / layers]).ToArray();
        int total = NumExperts * layers;
        var shares = weights.Select(w => total * w / weights.Sum()).ToArray();
        var counts = shares.Select(s => (int)Math.Floor(s)).ToArray();
        foreach (var i in Enumerable.Range(0, layers).OrderByDescending(i => shares[i] - Math.Floor(shares[i])).ThenBy(i => i).Take(total - counts.Sum())) counts[i]++;
        // Every layer keeps at least one expert, taken from the largest.
        for (int i = 0; i < layers; i++)
            while (counts[i] < 1)
            {
                counts[Array.IndexOf(counts, counts.Max())]--;
                counts[i]++;
            }
        return counts;
    }

    /// <summary>The layer index of a module path: its first all-digit segment ("layers.3.mlp.down_proj" → 3); null when
    /// it has none (the targets then count as one layer).</summary>
    public static int? LayerIndex(string path) =>
        path.Split('.').Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var i) ? i : (int?)null).FirstOrDefault(i => i is not null);

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        var layers = targetPaths.Select(p => LayerIndex(p) ?? 0).Distinct().Order().ToList();
        var counts = Allocate(layers.Count);
        return new MolaAllocation(targetPaths.ToDictionary(p => p, p => counts[layers.IndexOf(LayerIndex(p) ?? 0)]));
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var allocation = context.ModelAdapter as MolaAllocation
            ?? throw new InvalidOperationException("A MoLA adapter is created with its allocation (CreateModelAdapter).");
        int experts = allocation.Experts[context.Path];
        return new MolaAdapter(experts, Math.Min(TopK, experts), R, LoraAlpha / R, AdapterModule.BaseWeight(context.BaseLayer));
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".mola_"];

    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems)
    {
        var router = tensors.FirstOrDefault(t => t.Name.EndsWith(".mola_router.weight"));
        var a = tensors.FirstOrDefault(t => t.Name.EndsWith(".mola_A"));
        var b = tensors.FirstOrDefault(t => t.Name.EndsWith(".mola_B"));
        if (router is null || a is null || b is null)
        {
            problems.Add($"'{path}' lacks one of mola_router.weight, mola_A, mola_B.");
            return null;
        }
        if (a.Shape.Length != 3 || b.Shape.Length != 3 || a.Shape[0] != router.Shape[0] || b.Shape[0] != router.Shape[0] || a.Shape[1] != R || b.Shape[2] != R)
            problems.Add($"'{path}': mola_router.weight [{string.Join(", ", router.Shape)}], mola_A [{string.Join(", ", a.Shape)}], mola_B [{string.Join(", ", b.Shape)}] do not agree with each other and r = {R}.");
        return R;
    }

    protected internal override IReadOnlyList<string> Choices(string option) => option == "allocation" ? Allocations : [];

    protected internal override object? ParseOption(Type type, string text) =>
        type == typeof(IReadOnlyList<int>)
            ? text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t => int.Parse(t, NumberStyles.Integer, CultureInfo.InvariantCulture)).ToArray()
            : null;
}

/// <summary>The experts each MoLA layer gets (by module path), decided once for all targets of the adapter.</summary>
public sealed class MolaAllocation(IReadOnlyDictionary<string, int> experts) : ModelAdapter(nameof(MolaAllocation))
{
    public IReadOnlyDictionary<string, int> Experts { get; } = experts;

    public override string MethodName => "mola";
}

using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// Polytropon (Ponti et al. 2023, "Combining Parameter-efficient Modules for Task-level Generalisation", Eq. 2-4) and
/// Multi-Head Routing (Caccia et al. 2023, "Multi-Head Adapter Routing for Cross-Task Generalization", §3, Eq. 5-6), as
/// Hugging Face PEFT 0.20 has them (<c>peft/tuners/poly</c>): each targeted Linear holds an inventory of K LoRA skills
/// (A_k ∈ R^{in×r}, B_k ∈ R^{r×out}) and a task × skill routing logit matrix Z ∈ R^{T×K}. Row t of a batch with task
/// id t gets A_t = Σ_k w_tk A_k, B_t = Σ_k w_tk B_k, w_tk = z_tk / (Σ_j z_tj + 1e-12), z = sigmoid(Z) at eval and a
/// relaxed Bernoulli sample in training (<see cref="PolyRouter"/>), and y = W x + x A_t B_t / r. MHR
/// (<see cref="NSplits"/> &gt; 1) cuts the input features of A and the output features of B into n_splits blocks, each
/// with its own routing (Z ∈ R^{T×(n_splits·K)}). Task ids come per row from <see cref="ForwardContext.TaskIds"/>;
/// with n_tasks = 1 a forward without them routes every row as task 0 (PEFT requires them always). The file is PEFT's:
/// <c>peft_type</c> "POLY", tensors <c>poly_lora_A</c> (n_splits, K, in / n_splits, r), <c>poly_lora_B</c>
/// (n_splits, K, r, out / n_splits) and <c>poly_router.module_logits</c> (T, n_splits·K) per module.
/// </summary>
public sealed record PolyConfig : AdapterConfig
{
    /// <summary>PEFT <c>r</c>: the rank of every skill.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of each skill's LoRA", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary>PEFT <c>n_tasks</c>: how many tasks the routing matrix has rows for (task ids 0 .. n_tasks-1).</summary>
    [JsonPropertyName("n_tasks"), Option("tasks", "n_tasks: rows of the task x skill routing matrix", Min = 1, Max = 100000)]
    public int NTasks { get; init; } = 1;

    /// <summary>PEFT <c>n_skills</c>: K, the LoRA skills in each layer's inventory.</summary>
    [JsonPropertyName("n_skills"), Option("skills", "n_skills: LoRA skills in each layer's inventory", Min = 1, Max = 4096)]
    public int NSkills { get; init; } = 4;

    /// <summary>PEFT <c>n_splits</c>: 1 for Poly; above 1 for MHR (one routing per block of features).</summary>
    [JsonPropertyName("n_splits"), Option("splits", "n_splits: 1 = Poly, >1 = Multi-Head Routing (one routing per feature block)", Min = 1, Max = 4096)]
    public int NSplits { get; init; } = 1;

    /// <summary>PEFT <c>poly_type</c>: "poly", the only router PEFT has.</summary>
    [JsonPropertyName("poly_type")]
    public string PolyType { get; init; } = "poly";

    /// <summary>PEFT <c>init_weights</c>: true starts every B at zero (the identity); false draws B like A (for tests).</summary>
    [JsonPropertyName("init_weights"), Option("init-weights", "init_weights: B = 0 at init (false: random B, for tests)")]
    public bool InitWeights { get; init; } = true;

    public override string MethodName => NSplits > 1 ? "mhr" : "poly";

    public override string PeftType => "POLY";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    protected internal override IEnumerable<string> OmittedCommonFields => ["layers_to_transform", "layers_pattern"];

    public override void Validate()
    {
        base.Validate();
        if (PolyType != "poly")
            throw new ArgumentOutOfRangeException(nameof(PolyType), PolyType, "poly_type must be \"poly\", the only router Hugging Face PEFT has.");
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);   // (out, in)
        long outFeatures = weight.shape[0], inFeatures = weight.shape[1];
        if (inFeatures % NSplits != 0 || outFeatures % NSplits != 0)
            throw new ArgumentOutOfRangeException(nameof(NSplits), NSplits,
                $"n_splits {NSplits} must divide both feature counts of '{context.Path}' (Linear {inFeatures} -> {outFeatures}); choose a common divisor such as {Gcd(inFeatures, outFeatures)}.");
        return new PolyAdapter(this, inFeatures, outFeatures, weight.dtype, weight.device, context.Initialize);
    }

    static long Gcd(long a, long b) => b == 0 ? a : Gcd(b, a % b);

    public override IReadOnlyList<string> FileTensorMarkers => [".poly_"];

    /// <summary>The three tensors must be there with shapes that agree with each other and with the config.</summary>
    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems)
    {
        var a = tensors.FirstOrDefault(t => t.Name.EndsWith(".poly_lora_A"));
        var b = tensors.FirstOrDefault(t => t.Name.EndsWith(".poly_lora_B"));
        var logits = tensors.FirstOrDefault(t => t.Name.EndsWith(".poly_router.module_logits"));
        if (a is null || b is null || logits is null)
        {
            problems.Add($"'{path}' lacks {string.Join(", ", new[] { (a, "poly_lora_A"), (b, "poly_lora_B"), (logits, "poly_router.module_logits") }.Where(p => p.Item1 is null).Select(p => p.Item2))}.");
            return null;
        }
        string Shape(SafeTensorInfo t) => $"[{string.Join(", ", t.Shape)}]";
        if (a.Shape.Length != 4 || a.Shape[0] != NSplits || a.Shape[1] != NSkills || a.Shape[3] != R)
            problems.Add($"'{path}': poly_lora_A is {Shape(a)} but adapter_config.json says (n_splits={NSplits}, n_skills={NSkills}, in/n_splits, r={R}).");
        if (b.Shape.Length != 4 || b.Shape[0] != NSplits || b.Shape[1] != NSkills || b.Shape[2] != R)
            problems.Add($"'{path}': poly_lora_B is {Shape(b)} but adapter_config.json says (n_splits={NSplits}, n_skills={NSkills}, r={R}, out/n_splits).");
        if (logits.Shape.Length != 2 || logits.Shape[0] != NTasks || logits.Shape[1] != (long)NSplits * NSkills)
            problems.Add($"'{path}': poly_router.module_logits is {Shape(logits)} but adapter_config.json says (n_tasks={NTasks}, n_splits·n_skills={NSplits * NSkills}).");
        if (TargetModules is { } targets && !targets.IsAllLinear && !TargetMatcher.IsTarget(targets, path, LayersToTransform, LayersPattern))
            problems.Add($"'{path}' is not matched by target_modules {targets}.");
        return R;
    }

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file) =>
        PolyType == "poly" ? this
            : throw new AdapterConfigException($"{file}: poly_type '{PolyType}' is not one PeftSharp (or PEFT 0.20) has; it should be \"poly\".");
}

using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// IncreLoRA (Zhang et al. 2023, "IncreLoRA: Incremental Parameter Allocation Method for Parameter-Efficient
/// Fine-tuning"): every target starts small, W x + (α / r₀)·P Λ Q x in AdaLoRA's SVD form with r₀ = <c>init_r</c>
/// triplets, and rank is <em>added</em> during training: every <c>deltaT</c> steps after <c>tinit</c> the
/// <c>top_h</c> targets of highest importance get one more rank-1 triplet (pᵢ, λᵢ, qᵢ) each, until the total rank reaches
/// the target (<c>target_r</c> × targets, or <c>target_total_rank</c>). Unlike AdaLoRA's pruning, a module's rank is not
/// bounded by what it started with. Importance, growth, advance learning and the restart warm-up are
/// <see cref="IncreLoraAllocator"/>'s. Not in Hugging Face PEFT; fields are named as AdaLoRA's where they mean the same,
/// the file holds <c>lora_A</c> [r, in], <c>lora_E</c> [r, 1], <c>lora_B</c> [out, r] per target with each target's
/// grown r in <c>rank_pattern</c>.
/// </summary>
public sealed record IncreLoraConfig : AdapterConfig
{
    /// <summary><c>init_r</c>: the rank r₀ every target starts with (the official code's <c>lora_r</c>).</summary>
    [JsonPropertyName("init_r"), Option("init-r", "init_r: the rank every target starts with", Min = 1, Max = 65536)]
    public int InitR { get; init; } = 2;

    /// <summary><c>target_r</c>: the average rank per target once growth is over (total = target_r × targets, unless
    /// <see cref="TargetTotalRank"/> gives it).</summary>
    [JsonPropertyName("target_r"), Option("target-r", "target_r: average final rank per target", Min = 1, Max = 65536)]
    public int TargetR { get; init; } = 4;

    /// <summary><c>target_total_rank</c>: the final total rank over all targets (null: target_r × targets).</summary>
    [JsonPropertyName("target_total_rank"), Option("target-total", "target_total_rank: final total rank over all targets", Min = 1)]
    public int? TargetTotalRank { get; init; }

    /// <summary><c>tinit</c>: steps before the first growth (the official code's <c>init_warmup</c>).</summary>
    [JsonPropertyName("tinit"), Option("tinit", "tinit: steps before the first growth", Min = 0)]
    public int Tinit { get; init; }

    /// <summary><c>deltaT</c>: steps between two growths (the official code's <c>incre_interval</c>).</summary>
    [JsonPropertyName("deltaT"), Option("delta-t", "deltaT: steps between two growths", Min = 1)]
    public int DeltaT { get; init; } = 10;

    /// <summary><c>top_h</c>: how many targets (those of highest importance) get one triplet at each growth.</summary>
    [JsonPropertyName("top_h"), Option("top-h", "top_h: targets that get a triplet at each growth", Min = 1)]
    public int TopH { get; init; } = 4;

    /// <summary><c>beta1</c>: EMA factor of the sensitivity |p·∇p| (AdaLoRA's eq. 9).</summary>
    [JsonPropertyName("beta1"), Option("beta1", "beta1: EMA factor of the sensitivity", Min = 0, Max = 1, MinExclusive = true, MaxExclusive = true)]
    public double Beta1 { get; init; } = 0.85;

    /// <summary><c>beta2</c>: EMA factor of the uncertainty |I − Ī| (AdaLoRA's eq. 10).</summary>
    [JsonPropertyName("beta2"), Option("beta2", "beta2: EMA factor of the uncertainty", Min = 0, Max = 1, MinExclusive = true, MaxExclusive = true)]
    public double Beta2 { get; init; } = 0.85;

    /// <summary><c>orth_reg_weight</c>: γ of the regulariser γ·mean(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F), over every triplet of a
    /// target including the reserved one (advance learning).</summary>
    [JsonPropertyName("orth_reg_weight"), Option("orth-reg", "orth_reg_weight: weight of the orthogonality regulariser", Min = 0)]
    public double OrthRegWeight { get; init; } = 0.3;

    /// <summary><c>warmup_steps</c>: the restart warm-up: a triplet added during training trains at
    /// k / warmup_steps of the learning rate in its k-th step, up to the full rate (0: no warm-up).</summary>
    [JsonPropertyName("warmup_steps"), Option("warmup", "warmup_steps: steps over which an added triplet's learning rate ramps up", Min = 0)]
    public int WarmupSteps { get; init; } = 10;

    /// <summary><c>advance_learn</c>: each target keeps one reserved triplet (λ frozen at 0, p and q trained by the
    /// orthogonality regulariser only) that becomes the next added triplet, so it starts orthogonal to the others;
    /// false: an added triplet starts from fresh N(0, 0.02²) vectors.</summary>
    [JsonPropertyName("advance_learn"), Option("advance-learn", "advance_learn: pre-train the next triplet's vectors by the regulariser")]
    public bool AdvanceLearn { get; init; } = true;

    /// <summary><c>rank_pattern</c>: per target path, the rank it has grown to. Written by the allocator; a file with
    /// it loads with those ranks.</summary>
    [JsonPropertyName("rank_pattern")]
    public IReadOnlyDictionary<string, int>? RankPattern { get; init; }

    /// <summary><c>lora_alpha</c>: the scale is α / init_r for every triplet, the added ones included (the scale does not
    /// change when rank grows, so adding a triplet with λ = 0 leaves the model's function unchanged).</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: scale alpha / init_r", MinExclusive = true, Min = 0)]
    public double LoraAlpha { get; init; } = 8;

    /// <summary><c>lora_dropout</c>: dropout on the adapter's input during training.</summary>
    [JsonPropertyName("lora_dropout"), Option("dropout", "lora_dropout on the adapter input", Min = 0, Max = 1, MaxExclusive = true)]
    public double LoraDropout { get; init; }

    /// <summary><c>init_lora_weights</c>: true gives Λ = 0 and P, Q ~ N(0, 0.02²) (the identity at start); false leaves
    /// all three standard normal (for tests).</summary>
    [JsonPropertyName("init_lora_weights"), Option("init", "init_lora_weights: true (E = 0) | false (random)")]
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;

    /// <summary><c>bias</c>: "none", "all" or "lora_only", as for LoRA.</summary>
    [JsonPropertyName("bias"), Option("bias", "none | all | lora_only: which biases train")]
    public string Bias { get; init; } = "none";

    public override string MethodName => "increlora";

    public override string PeftType => "INCRELORA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    /// <summary>The rank the target at <paramref name="path"/> has when created: its rank_pattern entry (a file of a
    /// grown adapter), else init_r.</summary>
    public int RankAt(string path) => RankPattern?.GetValueOrDefault(path) is int r and > 0 ? r : InitR;

    /// <summary>The final total rank for <paramref name="targets"/> targets.</summary>
    public int TargetTotalFor(int targets) => TargetTotalRank ?? TargetR * targets;

    public override void Validate()
    {
        base.Validate();
        if (TargetTotalRank is null && TargetR < InitR)
            throw new ArgumentOutOfRangeException(nameof(TargetR), TargetR, $"target_r ({TargetR}) must be at least init_r ({InitR}): IncreLoRA only adds rank.");
        if (InitLoraWeights != LoraInit.Default && InitLoraWeights != LoraInit.Random)
            throw new ArgumentOutOfRangeException(nameof(InitLoraWeights), InitLoraWeights.Name,
                $"IncreLoRA's init_lora_weights is true (E = 0, A and B ~ N(0, 0.02²)) or false (random); '{InitLoraWeights.Name}' is a LoRA init.");
        if (Bias is not ("none" or "all" or "lora_only")) throw new ArgumentOutOfRangeException(nameof(Bias), Bias, "bias must be \"none\", \"all\" or \"lora_only\".");
        if (RankPattern is { } pattern)
            foreach (var (path, rank) in pattern)
                if (rank < 1)
                    throw new ArgumentException($"rank_pattern['{path}'] is {rank}; a target's grown rank is at least 1 (init_r is {InitR}).", nameof(RankPattern));
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        return new IncreLoraLinearAdapter(RankAt(context.Path), InitR, LoraAlpha, LoraDropout, weight, context.Initialize ? InitLoraWeights : null);
    }

    /// <summary>Wires the adapter's <see cref="IncreLoraAllocator"/> into <paramref name="trainer"/> (regulariser, growth
    /// and warm-up after each step) when the adapter trains; nothing for an adapter loaded frozen.</summary>
    public override IDisposable? AttachToTraining(PeftModel peft, string adapterName, Training.Trainer trainer) =>
        peft.Layers.Any(l => l.Contains(adapterName) && l[adapterName].parameters().Any(p => p.requires_grad))
            ? IncreLoraAllocator.For(peft, adapterName).Attach(trainer)
            : null;

    public override IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => Bias switch
    {
        "all" => parameterPaths.Where(p => p == "bias" || p.EndsWith(".bias", StringComparison.Ordinal)),
        "lora_only" => parameterPaths.Where(p => targetPaths.Any(t => p == t + ".base_layer.bias")),
        _ => [],
    };

    public override IReadOnlyList<string> FileTensorMarkers => [".lora_"];

    /// <summary>lora_A [r, in], lora_E [r, 1] and lora_B [out, r] must be there and share the rank the config gives the
    /// module (its rank_pattern entry, else init_r).</summary>
    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems) =>
        AdaLoraConfig.InspectSvdTriplets(path, tensors, problems, RankAt(path), "its rank_pattern entry, else init_r", TargetModules, LayersToTransform, LayersPattern);

    protected internal override IReadOnlyList<string> Choices(string option) => option switch
    {
        "init" => ["true", "false"],
        "bias" => ["none", "all", "lora_only"],
        _ => [],
    };

    protected internal override object? ParseOption(Type type, string text) => type == typeof(LoraInit) ? LoraInit.Parse(text) : null;
}

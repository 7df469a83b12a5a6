using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", eq. 3): each target
/// gets W x + (α / r₀)·P Λ Q x in SVD form, P = <c>lora_B</c> [out, r₀], Λ = diag(<c>lora_E</c> [r₀, 1]),
/// Q = <c>lora_A</c> [r₀, in], and a budget of singular triplets is moved during training towards the modules where
/// they matter (<see cref="AdaLoraAllocator"/>: importance eq. 8–11, cubic budget eq. 12, orthogonality regulariser
/// eq. 4). Fields, defaults, checks and file follow Hugging Face PEFT 0.20's <c>AdaLoraConfig</c> (a subclass of its
/// <c>LoraConfig</c>, so it writes LoRA's fields too; <c>r</c> is written but unused, as in PEFT).
/// </summary>
public sealed record AdaLoraConfig : AdapterConfig
{
    /// <summary>PEFT <c>init_r</c>: the rank r₀ every target starts with.</summary>
    [JsonPropertyName("init_r"), Option("init-r", "init_r: the rank every target starts with", Min = 1, Max = 65536)]
    public int InitR { get; init; } = 12;

    /// <summary>PEFT <c>target_r</c>: the average rank per target once the budget has shrunk (total budget = target_r ×
    /// number of targets).</summary>
    [JsonPropertyName("target_r"), Option("target-r", "target_r: average final rank per target", Min = 0, Max = 65536)]
    public int TargetR { get; init; } = 8;

    /// <summary>PEFT <c>tinit</c>: steps of warm-up at the full budget before allocation starts.</summary>
    [JsonPropertyName("tinit"), Option("tinit", "tinit: warm-up steps at the full budget", Min = 0)]
    public int Tinit { get; init; }

    /// <summary>PEFT <c>tfinal</c>: final steps at the target budget with the allocation fixed.</summary>
    [JsonPropertyName("tfinal"), Option("tfinal", "tfinal: final steps with the allocation fixed", Min = 0)]
    public int Tfinal { get; init; }

    /// <summary>PEFT <c>deltaT</c>: steps between two allocations during the budget phase.</summary>
    [JsonPropertyName("deltaT"), Option("delta-t", "deltaT: steps between two allocations", Min = 1)]
    public int DeltaT { get; init; } = 1;

    /// <summary>PEFT <c>beta1</c>: EMA factor of the sensitivity |p·∇p| (eq. 9).</summary>
    [JsonPropertyName("beta1"), Option("beta1", "beta1: EMA factor of the sensitivity", Min = 0, Max = 1, MinExclusive = true, MaxExclusive = true)]
    public double Beta1 { get; init; } = 0.85;

    /// <summary>PEFT <c>beta2</c>: EMA factor of the uncertainty |I − Ī| (eq. 10).</summary>
    [JsonPropertyName("beta2"), Option("beta2", "beta2: EMA factor of the uncertainty", Min = 0, Max = 1, MinExclusive = true, MaxExclusive = true)]
    public double Beta2 { get; init; } = 0.85;

    /// <summary>PEFT <c>orth_reg_weight</c>: γ of the regulariser γ·mean(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F) added to the loss.</summary>
    [JsonPropertyName("orth_reg_weight"), Option("orth-reg", "orth_reg_weight: weight of the orthogonality regulariser", Min = 0)]
    public double OrthRegWeight { get; init; } = 0.5;

    /// <summary>PEFT <c>total_step</c>: the number of training steps the schedule is laid out for (required).</summary>
    [JsonPropertyName("total_step"), Option("total-step", "total_step: training steps the budget schedule spans", Min = 1)]
    public int? TotalStep { get; init; }

    /// <summary>PEFT <c>rank_pattern</c> as AdaLoRA uses it: per target (<c>"&lt;module path&gt;.lora_E"</c>) which of
    /// the r₀ triplets were kept by the last allocation. Written by the allocator; a file with it loads with those ranks.</summary>
    [JsonPropertyName("rank_pattern")]
    public IReadOnlyDictionary<string, IReadOnlyList<bool>>? RankPattern { get; init; }

    /// <summary>PEFT <c>r</c>: inherited from LoRA and ignored by AdaLoRA (use <see cref="InitR"/>); written for the file.</summary>
    [JsonPropertyName("r")]
    public int R { get; init; } = 8;

    /// <summary>PEFT <c>lora_alpha</c>: the scale numerator α; the update is scaled by α / (r₀ + 1e-5), r₀ being the
    /// <c>ranknum</c> each layer keeps (pruned triplets do not change it).</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: scale alpha / init_r", MinExclusive = true, Min = 0)]
    public double LoraAlpha { get; init; } = 8;

    /// <summary>PEFT <c>lora_dropout</c>: dropout on the adapter's input during training.</summary>
    [JsonPropertyName("lora_dropout"), Option("dropout", "lora_dropout on the adapter input", Min = 0, Max = 1, MaxExclusive = true)]
    public double LoraDropout { get; init; }

    /// <summary>PEFT <c>init_lora_weights</c>: true gives Λ = 0 and P, Q ~ N(0, 0.02²) (the identity at start); false
    /// leaves all three standard normal (for tests).</summary>
    [JsonPropertyName("init_lora_weights"), Option("init", "init_lora_weights: true (E = 0) | false (random)")]
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;

    /// <summary>PEFT <c>bias</c>: "none", "all" or "lora_only", as for LoRA.</summary>
    [JsonPropertyName("bias"), Option("bias", "none | all | lora_only: which biases train")]
    public string Bias { get; init; } = "none";

    /// <summary>PEFT <c>use_rslora</c>: not used by AdaLoRA; must stay false.</summary>
    [JsonPropertyName("use_rslora")]
    public bool UseRslora { get; init; }

    /// <summary>PEFT <c>use_dora</c>: AdaLoRA refuses DoRA, as PEFT does.</summary>
    [JsonPropertyName("use_dora")]
    public bool UseDora { get; init; }

    /// <summary>PEFT <c>lora_bias</c>: AdaLoRA's layers have no bias of their own; must stay false.</summary>
    [JsonPropertyName("lora_bias")]
    public bool LoraBias { get; init; }

    /// <summary>PEFT <c>alpha_pattern</c>: not used by AdaLoRA (every target uses lora_alpha); must stay empty.</summary>
    [JsonPropertyName("alpha_pattern")]
    public IReadOnlyDictionary<string, double>? AlphaPattern { get; init; }

    public override string MethodName => "adalora";

    public override string PeftType => "ADALORA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    /// <summary>The <c>rank_pattern</c> key of the target <paramref name="path"/>, as PEFT writes it.</summary>
    public static string PatternKeyOf(string path) => path + ".lora_E";

    /// <summary>The triplets kept at <paramref name="path"/> (rank_pattern), or null when all r₀ are.</summary>
    public IReadOnlyList<bool>? KeptAt(string path) => RankPattern?.GetValueOrDefault(PatternKeyOf(path));

    /// <summary>The rank the target at <paramref name="path"/> has when created: the kept count of its rank_pattern
    /// entry (PEFT's resize on load), else init_r.</summary>
    public int RankAt(string path) => KeptAt(path) is { } kept ? kept.Count(k => k) : InitR;

    public override void Validate()
    {
        base.Validate();
        if (TotalStep is null)
            throw new ArgumentException("total_step is required: AdaLoRA lays its budget schedule over the run's training steps (e.g. epochs × batches per epoch).", nameof(TotalStep));
        if (Tinit >= TotalStep - Tfinal)
            throw new ArgumentOutOfRangeException(nameof(Tinit), Tinit,
                $"tinit ({Tinit}) must be below total_step − tfinal ({TotalStep} − {Tfinal} = {TotalStep - Tfinal}) so that there is a budget phase; lower tinit/tfinal or raise total_step.");
        if (TargetR > InitR)
            throw new ArgumentOutOfRangeException(nameof(TargetR), TargetR, $"target_r ({TargetR}) must not exceed init_r ({InitR}): AdaLoRA only removes rank.");
        if (UseDora) throw new ArgumentException("AdaLoRA does not support DoRA (use_dora), as in PEFT: set use_dora to false.", nameof(UseDora));
        if (UseRslora) throw new ArgumentException("AdaLoRA scales by lora_alpha / init_r and ignores use_rslora (PEFT does too): set use_rslora to false.", nameof(UseRslora));
        if (LoraBias) throw new ArgumentException("AdaLoRA's layers have no bias of their own (lora_bias): set lora_bias to false.", nameof(LoraBias));
        if (AlphaPattern is { Count: > 0 })
            throw new ArgumentException("AdaLoRA uses lora_alpha for every target and ignores alpha_pattern (PEFT does too): leave alpha_pattern empty.", nameof(AlphaPattern));
        if (InitLoraWeights != LoraInit.Default && InitLoraWeights != LoraInit.Random)
            throw new ArgumentOutOfRangeException(nameof(InitLoraWeights), InitLoraWeights.Name,
                $"AdaLoRA's init_lora_weights is true (E = 0, A and B ~ N(0, 0.02²)) or false (random); '{InitLoraWeights.Name}' is a LoRA init.");
        if (Bias is not ("none" or "all" or "lora_only")) throw new ArgumentOutOfRangeException(nameof(Bias), Bias, "bias must be \"none\", \"all\" or \"lora_only\".");
        if (RankPattern is { } pattern)
            foreach (var (key, kept) in pattern)
            {
                if (!key.EndsWith(".lora_E", StringComparison.Ordinal))
                    throw new ArgumentException($"rank_pattern key '{key}' should name a target's singular values, '<module path>.lora_E' (e.g. 'lin0.lora_E').", nameof(RankPattern));
                if (kept is null || kept.Count != InitR)
                    throw new ArgumentException($"rank_pattern['{key}'] has {kept?.Count ?? 0} entries but init_r is {InitR}: it marks which of the init_r triplets are kept (true/false each).", nameof(RankPattern));
            }
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        return new AdaLoraLinearAdapter(RankAt(context.Path), InitR, LoraAlpha, LoraDropout, weight, context.Initialize ? InitLoraWeights : null);
    }

    /// <summary>Wires the adapter's <see cref="AdaLoraAllocator"/> into <paramref name="trainer"/> (regulariser and
    /// allocation after each step) when the adapter trains; nothing for an adapter loaded frozen.</summary>
    public override IDisposable? AttachToTraining(PeftModel peft, string adapterName, Training.Trainer trainer) =>
        peft.Layers.Any(l => l.Contains(adapterName) && l[adapterName].parameters().Any(p => p.requires_grad))
            ? AdaLoraAllocator.For(peft, adapterName).Attach(trainer)
            : null;

    public override IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => Bias switch
    {
        "all" => parameterPaths.Where(p => p == "bias" || p.EndsWith(".bias", StringComparison.Ordinal)),
        "lora_only" => parameterPaths.Where(p => targetPaths.Any(t => p == t + ".base_layer.bias")),
        _ => [],
    };

    protected internal override void WriteFixedFields(JsonObject json)
    {
        json["alpha_pattern"] ??= new JsonObject();
        LoraConfig.WriteUnusedLoraFields(json);
    }

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file)
    {
        var unsupported = LoraConfig.UnsupportedLoraFeatures(json);
        if (unsupported.Count > 0)
            throw new AdapterConfigException($"{file}: this AdaLoRA adapter uses features PeftSharp does not support: {string.Join(", ", unsupported)}.");
        return this;
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".lora_"];

    /// <summary>lora_A [r, in], lora_E [r, 1] and lora_B [out, r] must be there and share the rank the config gives the
    /// module (its rank_pattern's kept count, else init_r).</summary>
    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems) =>
        InspectSvdTriplets(path, tensors, problems, RankAt(path), "init_r, or the kept count of rank_pattern", TargetModules, LayersToTransform, LayersPattern);

    /// <summary>The file check AdaLoRA and IncreLoRA share: lora_A [r, in], lora_E [r, 1] and lora_B [out, r] present,
    /// with one r equal to <paramref name="expectedRank"/> (<paramref name="rankSource"/> says where the config takes it
    /// from), and the module matched by the targets.</summary>
    internal static int? InspectSvdTriplets(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems, int expectedRank, string rankSource,
                                            TargetModules? targets, IReadOnlyList<int>? layersToTransform, IReadOnlyList<string>? layersPattern)
    {
        var a = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_A"));
        var e = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_E"));
        var b = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_B"));
        if (a is null || e is null || b is null)
        {
            problems.Add($"'{path}' needs lora_A, lora_E and lora_B; it has {string.Join(", ", tensors.Select(t => t.Name[(t.Name.LastIndexOf('.') + 1)..]))}.");
            return null;
        }
        int rank = (int)a.Shape[0];
        if (a.Shape.Length != 2 || b.Shape.Length != 2 || e.Shape.Length != 2 || e.Shape[0] != rank || e.Shape[1] != 1 || b.Shape[1] != rank)
            problems.Add($"'{path}': lora_A [{string.Join(", ", a.Shape)}], lora_E [{string.Join(", ", e.Shape)}] and lora_B [{string.Join(", ", b.Shape)}] " +
                         "should be [r, in], [r, 1] and [out, r] with one r.");
        else if (rank != expectedRank)
            problems.Add($"'{path}' has rank {rank} but adapter_config.json says {expectedRank} ({rankSource}).");
        if (targets is not null && !targets.IsAllLinear && !TargetMatcher.IsTarget(targets, path, layersToTransform, layersPattern))
            problems.Add($"'{path}' is not matched by target_modules {targets}.");
        return rank;
    }

    protected internal override IReadOnlyList<string> Choices(string option) => option switch
    {
        "init" => ["true", "false"],
        "bias" => ["none", "all", "lora_only"],
        _ => [],
    };

    protected internal override object? ParseOption(Type type, string text) => type == typeof(LoraInit) ? LoraInit.Parse(text) : null;
}

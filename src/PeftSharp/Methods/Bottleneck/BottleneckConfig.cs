using System.Globalization;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>How a bottleneck adapter's output is scaled (AdapterHub <c>scaling</c>: a number, "learned" or "channel").</summary>
public enum BottleneckScaling
{
    /// <summary>A fixed number, <see cref="BottleneckConfig.Scaling"/> (He et al. 2022 use 4 for parallel adapters).</summary>
    Fixed,

    /// <summary>One learned scalar, starting at <see cref="BottleneckConfig.Scaling"/>.</summary>
    Learned,

    /// <summary>One learned scale per output channel, starting at <see cref="BottleneckConfig.Scaling"/>.</summary>
    Channel,
}

/// <summary>Where the residual around a sequential adapter is taken (AdapterHub <c>residual_before_ln</c>), when the
/// adapter works after the sublayer's own residual and LayerNorm (<see cref="BottleneckConfig.OriginalLnBefore"/>).</summary>
public enum ResidualSource
{
    /// <summary><c>true</c>: the projection's output, before the sublayer's residual and LayerNorm.</summary>
    BeforeLayerNorm,

    /// <summary><c>false</c>: the LayerNorm's output (what the adapter itself sees).</summary>
    AfterLayerNorm,

    /// <summary><c>"post_add"</c>: projection + sublayer residual, before the LayerNorm.</summary>
    PostAdd,
}

/// <summary>What a parallel adapter reads.</summary>
public enum ParallelInput
{
    /// <summary>The input of the residual sublayer the target projects for (He et al. 2022: the FFN's or attention's
    /// input), given by the model's <see cref="SublayerContext"/> (BERT's <c>output.dense</c> and
    /// <c>attention.output.dense</c>). Width: the target's output width.</summary>
    SublayerInput,

    /// <summary>The target module's own input (LLM-Adapters' parallel adapter on a Linear). Width: its input width.</summary>
    LayerInput,
}

/// <summary>
/// Bottleneck adapters: a down projection, a non-linearity and an up projection, with the options of AdapterHub's
/// <c>BnConfig</c> (Pfeiffer et al. 2020). They wrap a target module (a Linear, LayerNorm or Embedding) and act on its
/// output; which sublayer an adapter serves is chosen by the targets (see <see cref="PfeifferTargets"/>,
/// <see cref="HoulsbyTargets"/> for BERT). Variants:
/// <list type="bullet">
/// <item>sequential (Houlsby et al. 2019, Eq. 1 and Fig. 2; Pfeiffer et al. 2021 "AdapterFusion" §3): h ← h + s·W_up f(W_down h);</item>
/// <item>parallel (He et al. 2022, "Towards a Unified View of PETL", Eq. 5 / §3.2): h ← F(x) + s·W_up f(W_down x), x the sublayer input;</item>
/// <item>convolutional (<see cref="ConvKernelSize"/>; the depthwise-convolution adapter of Cappellazzo et al. 2024,
/// "Parameter-Efficient Transfer Learning of Audio Spectrogram Transformers", after Conformer): a depthwise 1-D
/// convolution over the sequence between the projections;</item>
/// <item>Compacter / Compacter++ (<see cref="PhmLayer"/>; Mahabadi et al. 2021, Eq. 4-5): both projections are PHM layers
/// W = Σ_i A_i ⊗ B_i, A_i shared by every layer of the adapter, B_i = s_i t_iᵀ of rank <see cref="PhmRank"/>.</item>
/// </list>
/// Saved with <c>peft_type</c> "BOTTLENECK" and AdapterHub's field names (this library's layout: PEFT has no such
/// method); tensors <c>adapter_down.weight</c>, <c>adapter_up.weight</c>, ... per module, <c>phm_rule</c> once.
/// </summary>
public sealed record BottleneckConfig : AdapterConfig
{
    /// <summary>BERT (Hugging Face names): the FFN's output projection of every layer, Pfeiffer's placement.</summary>
    public const string PfeifferTargets = @".*layer\.\d+\.output\.dense";

    /// <summary>BERT: the attention output and FFN output projections of every layer, Houlsby's placement.</summary>
    public static readonly TargetModules HoulsbyTargets = TargetModules.Regex(@".*layer\.\d+\.(attention\.)?output\.dense");

    /// <summary>AdapterHub <c>reduction_factor</c>: bottleneck = width / reduction factor (unless <see cref="BottleneckSize"/>).</summary>
    public double ReductionFactor { get; init; } = 16;

    /// <summary>The bottleneck width itself; overrides <see cref="ReductionFactor"/>.</summary>
    public int? BottleneckSize { get; init; }

    /// <summary>AdapterHub <c>non_linearity</c>: relu, gelu, swish/silu, tanh, leakyrelu, identity.</summary>
    public string NonLinearity { get; init; } = "relu";

    /// <summary>AdapterHub <c>is_parallel</c>: add a branch from the sublayer input instead of transforming the output.</summary>
    public bool IsParallel { get; init; }

    /// <summary>What a parallel adapter reads (see <see cref="Bottleneck.ParallelInput"/>).</summary>
    public ParallelInput ParallelInput { get; init; } = ParallelInput.SublayerInput;

    /// <summary>AdapterHub <c>scaling</c>: the factor s (its start value when learned).</summary>
    public double Scaling { get; init; } = 1.0;

    public BottleneckScaling ScalingMode { get; init; } = BottleneckScaling.Fixed;

    /// <summary>AdapterHub <c>ln_before</c>: a new LayerNorm on the adapter's input.</summary>
    public bool LnBefore { get; init; }

    /// <summary>AdapterHub <c>ln_after</c>: a new LayerNorm on the adapter's output.</summary>
    public bool LnAfter { get; init; }

    /// <summary>AdapterHub <c>adapter_residual_before_ln</c>: add the residual before <see cref="LnAfter"/>'s LayerNorm
    /// (else after it).</summary>
    public bool AdapterResidualBeforeLn { get; init; }

    /// <summary>AdapterHub <c>original_ln_before</c>: the adapter sees LN(projection + sublayer residual), the
    /// sublayer's own residual and LayerNorm (Pfeiffer's configuration); needs the model's <see cref="SublayerContext"/>.
    /// The model applies its residual and LayerNorm again after the adapter (AdapterHub <c>original_ln_after</c>,
    /// always true here).</summary>
    public bool OriginalLnBefore { get; init; }

    /// <summary>AdapterHub <c>residual_before_ln</c>: where the adapter's residual comes from.</summary>
    public ResidualSource ResidualBeforeLn { get; init; } = ResidualSource.BeforeLayerNorm;

    /// <summary>AdapterHub <c>dropout</c> on the adapter's output, in training mode.</summary>
    public double Dropout { get; init; }

    /// <summary>AdapterHub <c>init_weights</c>: "mam_adapter" (W_down Kaiming-uniform, W_up = 0: the identity at init,
    /// He et al.'s choice; the default here), "bert" (both N(0, 0.02)) or "houlsby" (both truncated N(0, 0.01)).</summary>
    public string InitWeights { get; init; } = "mam_adapter";

    /// <summary>A depthwise convolution of this kernel size over the sequence inside the bottleneck (odd; null: none).</summary>
    public int? ConvKernelSize { get; init; }

    /// <summary>AdapterHub <c>phm_layer</c>: Compacter's PHM projections.</summary>
    public bool PhmLayer { get; init; }

    /// <summary>AdapterHub <c>phm_dim</c>: n, the number of Kronecker terms (widths must divide by it).</summary>
    public int PhmDim { get; init; } = 4;

    /// <summary>AdapterHub <c>phm_rank</c>: the rank of each B_i = s_i t_iᵀ (1 in Compacter).</summary>
    public int PhmRank { get; init; } = 1;

    /// <summary>AdapterHub <c>shared_phm_rule</c>: one set of A_i for every PHM layer of the adapter (Compacter).</summary>
    public bool SharedPhmRule { get; init; } = true;

    /// <summary>AdapterHub <c>phm_init_range</c>: the standard deviation of the A_i at init.</summary>
    public double PhmInitRange { get; init; } = 1e-4;

    /// <summary>AdapterHub <c>phm_bias</c>: PHM layers have a bias.</summary>
    public bool PhmBias { get; init; } = true;

    public override string MethodName => PhmLayer ? "compacter" : ConvKernelSize is not null ? "conv-adapter" : IsParallel ? "parallel-adapter" : "bottleneck";

    public override string PeftType => "BOTTLENECK";

    public override string SupportedLayerTypes => IsParallel ? "Linear" : "Linear, LayerNorm, Embedding";

    public override bool CanHold(Module module) =>
        module is Linear || (!IsParallel && module is TorchSharp.Modules.LayerNorm or TorchSharp.Modules.Embedding);

    /// <summary>Houlsby et al. 2019: after the attention output and the FFN output projections, swish, reduction 16.</summary>
    public static BottleneckConfig Houlsby(TargetModules? targets = null) => new()
    {
        TargetModules = targets ?? HoulsbyTargets, NonLinearity = "swish", ReductionFactor = 16,
    };

    /// <summary>Pfeiffer et al. 2021: after the FFN only, on LN(FFN output + residual), residual from the FFN output,
    /// ReLU, reduction 16 (AdapterHub's <c>SeqBnConfig</c>).</summary>
    public static BottleneckConfig Pfeiffer(TargetModules? targets = null) => new()
    {
        TargetModules = targets ?? TargetModules.Regex(PfeifferTargets), NonLinearity = "relu", ReductionFactor = 16,
        OriginalLnBefore = true, ResidualBeforeLn = ResidualSource.BeforeLayerNorm,
    };

    /// <summary>He et al. 2022's parallel adapter on the FFN: reduction 2 in their setting, scaling 4, ReLU
    /// (AdapterHub's <c>ParBnConfig</c>).</summary>
    public static BottleneckConfig Parallel(TargetModules? targets = null) => new()
    {
        TargetModules = targets ?? TargetModules.Regex(PfeifferTargets), IsParallel = true, NonLinearity = "relu", ReductionFactor = 2, Scaling = 4,
    };

    /// <summary>Compacter (Mahabadi et al. 2021): Houlsby's placement with PHM layers, n = 4, reduction 32, GELU.</summary>
    public static BottleneckConfig Compacter(TargetModules? targets = null) => Houlsby(targets) with { PhmLayer = true, ReductionFactor = 32, NonLinearity = "gelu" };

    /// <summary>Compacter++: Pfeiffer's placement (one adapter per layer, after the FFN) with PHM layers.</summary>
    public static BottleneckConfig CompacterPlusPlus(TargetModules? targets = null) => Pfeiffer(targets) with { PhmLayer = true, ReductionFactor = 32, NonLinearity = "gelu" };

    /// <summary>The bottleneck width for a target <paramref name="width"/> wide.</summary>
    public int BottleneckAt(long width) => BottleneckSize ?? Math.Max(1, (int)(width / ReductionFactor));

    /// <summary>
    /// Compacter's parameter count (Mahabadi et al. 2021, §3.2/§4): n³ for the shared A_i plus, per PHM layer k → d
    /// (rank-1 B_i = s_i t_iᵀ), n·(k/n + d/n) = k + d; so 4L(k + d) + n³ for L layers with two adapters each. Biases
    /// are not in the paper's formula: <paramref name="phmLayers"/> is the number of PHM layers (two per adapter).
    /// </summary>
    public static long PaperParameterCount(int phmLayers, long k, long d, int n, int rank = 1) => (long)Math.Pow(n, 3) + phmLayers * rank * (k + d);

    public override void Validate()
    {
        base.Validate();
        if (BottleneckSize is < 1) throw new ArgumentOutOfRangeException(nameof(BottleneckSize), BottleneckSize, "bottleneck size must be at least 1.");
        if (!(ReductionFactor > 0)) throw new ArgumentOutOfRangeException(nameof(ReductionFactor), ReductionFactor, "reduction_factor must be positive, e.g. 16.");
        Activations.Validate(NonLinearity, nameof(NonLinearity));
        if (Dropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "dropout is a probability in [0, 1).");
        if (InitWeights is not ("mam_adapter" or "bert" or "houlsby"))
            throw new ArgumentOutOfRangeException(nameof(InitWeights), InitWeights, "init_weights must be \"mam_adapter\", \"bert\" or \"houlsby\".");
        if (ConvKernelSize is { } k && (k < 1 || k % 2 == 0))
            throw new ArgumentOutOfRangeException(nameof(ConvKernelSize), k, "The convolution kernel size must be odd (1, 3, 5, ...) so the sequence keeps its length.");
        if (PhmDim < 1) throw new ArgumentOutOfRangeException(nameof(PhmDim), PhmDim, "phm_dim (n) must be at least 1, typically 4.");
        if (PhmRank < 1) throw new ArgumentOutOfRangeException(nameof(PhmRank), PhmRank, "phm_rank must be at least 1.");
        if (IsParallel && OriginalLnBefore)
            throw new ArgumentException("original_ln_before belongs to sequential adapters; a parallel adapter reads the sublayer input.", nameof(OriginalLnBefore));
        if (PhmLayer && ConvKernelSize is not null)
            throw new ArgumentException("Choose PHM layers (Compacter) or a convolution, not both.", nameof(ConvKernelSize));
    }

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize) =>
        PhmLayer && SharedPhmRule ? new PhmRule(PhmDim, PhmInitRange, initialize, DeviceOf(model)) : null;

    static Device DeviceOf(Module model) => model.parameters().FirstOrDefault()?.device ?? CPU;

    public override AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize) =>
        CreateAdapter(path, baseLayer, initialize, null);

    public override AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize, ModelAdapter? modelAdapter)
    {
        var (inWidth, outWidth) = Activations.Widths(baseLayer, path);
        long input = IsParallel && ParallelInput == ParallelInput.LayerInput ? inWidth : outWidth;
        int bottleneck = BottleneckAt(outWidth);
        if (PhmLayer)
            foreach (var (what, width) in new[] { ("input", input), ("output", outWidth), ("bottleneck", (long)bottleneck) })
                if (width % PhmDim != 0)
                    throw new ArgumentOutOfRangeException(nameof(PhmDim), PhmDim,
                        $"'{path}': the adapter's {what} width {width} does not divide by phm_dim {PhmDim}; choose a phm_dim that divides {input}, {outWidth} and {bottleneck} (or set BottleneckSize).");
        var reference = baseLayer.parameters().First();
        return new BottleneckAdapter(this, path, input, outWidth, bottleneck, modelAdapter as PhmRule, reference.dtype, reference.device);
    }

    public override JsonObject ToPeftJson(bool asPlainDelta = true)
    {
        var json = new JsonObject();
        PeftJson.WriteCommon(json, this);
        json["method"] = MethodName;
        json["reduction_factor"] = ReductionFactor;
        json["bottleneck_size"] = BottleneckSize;
        json["non_linearity"] = NonLinearity;
        json["is_parallel"] = IsParallel;
        json["parallel_input"] = ParallelInput == ParallelInput.SublayerInput ? "sublayer" : "layer";
        json["scaling"] = ScalingMode switch
        {
            BottleneckScaling.Learned => "learned",
            BottleneckScaling.Channel => "channel",
            _ => JsonValue.Create(Scaling),
        };
        json["scaling_init"] = Scaling;
        json["ln_before"] = LnBefore;
        json["ln_after"] = LnAfter;
        json["adapter_residual_before_ln"] = AdapterResidualBeforeLn;
        json["original_ln_before"] = OriginalLnBefore;
        json["original_ln_after"] = true;
        json["residual_before_ln"] = ResidualBeforeLn switch
        {
            ResidualSource.BeforeLayerNorm => true,
            ResidualSource.AfterLayerNorm => false,
            _ => "post_add",
        };
        json["dropout"] = Dropout;
        json["init_weights"] = InitWeights;
        json["conv_kernel_size"] = ConvKernelSize;
        json["phm_layer"] = PhmLayer;
        json["phm_dim"] = PhmDim;
        json["phm_rank"] = PhmRank;
        json["shared_phm_rule"] = SharedPhmRule;
        json["factorized_phm_W"] = true;
        json["phm_init_range"] = PhmInitRange;
        json["phm_bias"] = PhmBias;
        return json;
    }

    public static BottleneckConfig FromPeftJson(JsonObject json, string file)
    {
        if (!PeftJson.GetOr(json, "original_ln_after", true, file))
            throw new AdapterConfigException($"{file}: original_ln_after=false is not supported: the model always applies its own residual and LayerNorm after the adapter.");
        if (!PeftJson.GetOr(json, "factorized_phm_W", true, file))
            throw new AdapterConfigException($"{file}: factorized_phm_W=false is not supported: PHM layers here factorise B_i = s_i t_iᵀ (phm_rank).");
        var (scaling, mode) = json["scaling"] switch
        {
            null => (1.0, BottleneckScaling.Fixed),
            JsonValue v when v.TryGetValue<string>(out var s) => s switch
            {
                "learned" => (PeftJson.GetOr(json, "scaling_init", 1.0, file), BottleneckScaling.Learned),
                "channel" => (PeftJson.GetOr(json, "scaling_init", 1.0, file), BottleneckScaling.Channel),
                _ => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? (d, BottleneckScaling.Fixed)
                    : throw new AdapterConfigException($"{file}: scaling should be a number, \"learned\" or \"channel\", not \"{s}\"."),
            },
            var v => (PeftJson.Get<double>(v, file, "scaling"), BottleneckScaling.Fixed),
        };
        var residual = json["residual_before_ln"] switch
        {
            null => ResidualSource.BeforeLayerNorm,
            JsonValue v when v.TryGetValue<bool>(out var b) => b ? ResidualSource.BeforeLayerNorm : ResidualSource.AfterLayerNorm,
            JsonValue v when v.TryGetValue<string>(out var s) && s == "post_add" => ResidualSource.PostAdd,
            var other => throw new AdapterConfigException($"{file}: residual_before_ln should be true, false or \"post_add\", not {other.ToJsonString()}."),
        };
        var config = new BottleneckConfig
        {
            ReductionFactor = PeftJson.GetOr(json, "reduction_factor", 16.0, file),
            BottleneckSize = json["bottleneck_size"] is null ? null : PeftJson.Get<int>(json["bottleneck_size"], file, "bottleneck_size"),
            NonLinearity = PeftJson.GetOr(json, "non_linearity", "relu", file),
            IsParallel = PeftJson.GetOr(json, "is_parallel", false, file),
            ParallelInput = PeftJson.GetOr(json, "parallel_input", "sublayer", file) switch
            {
                "sublayer" => ParallelInput.SublayerInput,
                "layer" => ParallelInput.LayerInput,
                var other => throw new AdapterConfigException($"{file}: parallel_input should be \"sublayer\" or \"layer\", not \"{other}\"."),
            },
            Scaling = scaling,
            ScalingMode = mode,
            LnBefore = PeftJson.GetOr(json, "ln_before", false, file),
            LnAfter = PeftJson.GetOr(json, "ln_after", false, file),
            AdapterResidualBeforeLn = PeftJson.GetOr(json, "adapter_residual_before_ln", false, file),
            OriginalLnBefore = PeftJson.GetOr(json, "original_ln_before", false, file),
            ResidualBeforeLn = residual,
            Dropout = PeftJson.GetOr(json, "dropout", 0.0, file),
            InitWeights = PeftJson.GetOr(json, "init_weights", "mam_adapter", file),
            ConvKernelSize = json["conv_kernel_size"] is null ? null : PeftJson.Get<int>(json["conv_kernel_size"], file, "conv_kernel_size"),
            PhmLayer = PeftJson.GetOr(json, "phm_layer", false, file),
            PhmDim = PeftJson.GetOr(json, "phm_dim", 4, file),
            PhmRank = PeftJson.GetOr(json, "phm_rank", 1, file),
            SharedPhmRule = PeftJson.GetOr(json, "shared_phm_rule", true, file),
            PhmInitRange = PeftJson.GetOr(json, "phm_init_range", 1e-4, file),
            PhmBias = PeftJson.GetOr(json, "phm_bias", true, file),
        };
        return PeftJson.ReadCommon(config, json, file);
    }
}

using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
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
    [JsonStringEnumMemberName("before")]
    BeforeLayerNorm,

    /// <summary><c>false</c>: the LayerNorm's output (what the adapter itself sees).</summary>
    [JsonStringEnumMemberName("after")]
    AfterLayerNorm,

    /// <summary><c>"post_add"</c>: projection + sublayer residual, before the LayerNorm.</summary>
    [JsonStringEnumMemberName("post_add")]
    PostAdd,
}

/// <summary>AdapterHub's <c>residual_before_ln</c>: <c>true</c>, <c>false</c> or <c>"post_add"</c>.</summary>
public sealed class ResidualSourceJsonConverter : JsonConverter<ResidualSource>
{
    public override ResidualSource Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.True => ResidualSource.BeforeLayerNorm,
        JsonTokenType.False => ResidualSource.AfterLayerNorm,
        JsonTokenType.String when reader.GetString() == "post_add" => ResidualSource.PostAdd,
        _ => throw new JsonException("true, false or \"post_add\""),
    };

    public override void Write(Utf8JsonWriter writer, ResidualSource value, JsonSerializerOptions options)
    {
        if (value == ResidualSource.PostAdd) writer.WriteStringValue("post_add");
        else writer.WriteBooleanValue(value == ResidualSource.BeforeLayerNorm);
    }
}

/// <summary>What a parallel adapter reads.</summary>
public enum ParallelInput
{
    /// <summary>The input of the residual sublayer the target projects for (He et al. 2022: the FFN's or attention's
    /// input), given by the model's <see cref="SublayerContext"/> (BERT's <c>output.dense</c> and
    /// <c>attention.output.dense</c>). Width: the target's output width.</summary>
    [JsonStringEnumMemberName("sublayer")]
    SublayerInput,

    /// <summary>The target module's own input (LLM-Adapters' parallel adapter on a Linear). Width: its input width.</summary>
    [JsonStringEnumMemberName("layer")]
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
    [JsonPropertyName("reduction_factor"), Option("reduction", "reduction_factor: bottleneck = width / reduction", Min = 0, MinExclusive = true, Max = 1e6)]
    public double ReductionFactor { get; init; } = 16;

    /// <summary>The bottleneck width itself; overrides <see cref="ReductionFactor"/>.</summary>
    [JsonPropertyName("bottleneck_size"), Option("size", "bottleneck_size: the bottleneck width (overrides reduction)", Min = 1, Max = 65536)]
    public int? BottleneckSize { get; init; }

    /// <summary>AdapterHub <c>non_linearity</c>: relu, gelu, swish/silu, tanh, leakyrelu, identity.</summary>
    [JsonPropertyName("non_linearity"), Option("activation", "non_linearity: relu | gelu | swish | tanh | leakyrelu | identity")]
    public string NonLinearity { get; init; } = "relu";

    /// <summary>AdapterHub <c>is_parallel</c>: add a branch from the sublayer input instead of transforming the output.</summary>
    [JsonPropertyName("is_parallel")]
    public bool IsParallel { get; init; }

    /// <summary>What a parallel adapter reads (see <see cref="Bottleneck.ParallelInput"/>).</summary>
    [JsonPropertyName("parallel_input"), Option("parallel-input", "what a parallel adapter reads: sublayer | layer")]
    public ParallelInput ParallelInput { get; init; } = ParallelInput.SublayerInput;

    /// <summary>AdapterHub <c>scaling</c>: the factor s (its start value when learned).</summary>
    [JsonIgnore]
    public double Scaling { get; init; } = 1.0;

    /// <summary>Fixed, learned or per channel (AdapterHub writes it into <c>scaling</c>, see <see cref="ScalingOption"/>).</summary>
    [JsonIgnore]
    public BottleneckScaling ScalingMode { get; init; } = BottleneckScaling.Fixed;

    /// <summary>AdapterHub's <c>scaling</c> as one value: a number (fixed), "learned" or "channel" (which start at
    /// <see cref="Scaling"/>); sets <see cref="Scaling"/> and <see cref="ScalingMode"/>.</summary>
    [JsonIgnore, Option("scaling", "scaling: a number, learned (one scalar) or channel (one per output)")]
    public string ScalingOption
    {
        get => ScalingMode switch
        {
            BottleneckScaling.Learned => "learned",
            BottleneckScaling.Channel => "channel",
            _ => Scaling.ToString(CultureInfo.InvariantCulture),
        };
        init
        {
            switch (value)
            {
                case "learned": ScalingMode = BottleneckScaling.Learned; break;
                case "channel": ScalingMode = BottleneckScaling.Channel; break;
                default:
                    Scaling = double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture);
                    ScalingMode = BottleneckScaling.Fixed;
                    break;
            }
        }
    }

    /// <summary>AdapterHub <c>ln_before</c>: a new LayerNorm on the adapter's input.</summary>
    [JsonPropertyName("ln_before"), Option("ln-before", "ln_before: a new LayerNorm on the adapter input")]
    public bool LnBefore { get; init; }

    /// <summary>AdapterHub <c>ln_after</c>: a new LayerNorm on the adapter's output.</summary>
    [JsonPropertyName("ln_after"), Option("ln-after", "ln_after: a new LayerNorm on the adapter output")]
    public bool LnAfter { get; init; }

    /// <summary>AdapterHub <c>adapter_residual_before_ln</c>: add the residual before <see cref="LnAfter"/>'s LayerNorm
    /// (else after it).</summary>
    [JsonPropertyName("adapter_residual_before_ln")]
    public bool AdapterResidualBeforeLn { get; init; }

    /// <summary>AdapterHub <c>original_ln_before</c>: the adapter sees LN(projection + sublayer residual), the
    /// sublayer's own residual and LayerNorm (Pfeiffer's configuration); needs the model's <see cref="SublayerContext"/>.
    /// The model applies its residual and LayerNorm again after the adapter (AdapterHub <c>original_ln_after</c>,
    /// always true here).</summary>
    [JsonPropertyName("original_ln_before"), Option("original-ln-before", "original_ln_before: the adapter sees LN(projection + residual) (BERT projections)")]
    public bool OriginalLnBefore { get; init; }

    /// <summary>AdapterHub <c>residual_before_ln</c>: where the adapter's residual comes from.</summary>
    [JsonPropertyName("residual_before_ln"), JsonConverter(typeof(ResidualSourceJsonConverter)), Option("residual", "residual_before_ln: before | after | post_add")]
    public ResidualSource ResidualBeforeLn { get; init; } = ResidualSource.BeforeLayerNorm;

    /// <summary>AdapterHub <c>dropout</c> on the adapter's output, in training mode.</summary>
    [JsonPropertyName("dropout"), Option("dropout", "dropout on the adapter output", Min = 0, Max = 1, MaxExclusive = true)]
    public double Dropout { get; init; }

    /// <summary>AdapterHub <c>init_weights</c>: "mam_adapter" (W_down Kaiming-uniform, W_up = 0: the identity at init,
    /// He et al.'s choice; the default here), "bert" (both N(0, 0.02)) or "houlsby" (both truncated N(0, 0.01)).</summary>
    [JsonPropertyName("init_weights"), Option("init", "init_weights: mam_adapter (identity at init) | bert | houlsby")]
    public string InitWeights { get; init; } = "mam_adapter";

    /// <summary>A depthwise convolution of this kernel size over the sequence inside the bottleneck (odd; null: none).</summary>
    [JsonPropertyName("conv_kernel_size"), Option("kernel", "conv_kernel_size: a depthwise convolution over the sequence (odd)", Min = 1, Max = 1025)]
    public int? ConvKernelSize { get; init; }

    /// <summary>AdapterHub <c>phm_layer</c>: Compacter's PHM projections.</summary>
    [JsonPropertyName("phm_layer")]
    public bool PhmLayer { get; init; }

    /// <summary>AdapterHub <c>phm_dim</c>: n, the number of Kronecker terms (widths must divide by it).</summary>
    [JsonPropertyName("phm_dim"), Option("phm-dim", "phm_dim: n Kronecker terms (Compacter)", Min = 1, Max = 64)]
    public int PhmDim { get; init; } = 4;

    /// <summary>AdapterHub <c>phm_rank</c>: the rank of each B_i = s_i t_iᵀ (1 in Compacter).</summary>
    [JsonPropertyName("phm_rank"), Option("phm-rank", "phm_rank: rank of each B_i (Compacter)", Min = 1, Max = 4096)]
    public int PhmRank { get; init; } = 1;

    /// <summary>AdapterHub <c>shared_phm_rule</c>: one set of A_i for every PHM layer of the adapter (Compacter).</summary>
    [JsonPropertyName("shared_phm_rule")]
    public bool SharedPhmRule { get; init; } = true;

    /// <summary>AdapterHub <c>phm_init_range</c>: the standard deviation of the A_i at init.</summary>
    [JsonPropertyName("phm_init_range")]
    public double PhmInitRange { get; init; } = 1e-4;

    /// <summary>AdapterHub <c>phm_bias</c>: PHM layers have a bias.</summary>
    [JsonPropertyName("phm_bias")]
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
        if (!double.IsFinite(Scaling)) throw new ArgumentOutOfRangeException(nameof(Scaling), Scaling, "scaling must be a finite number, e.g. 1 or 4.");
        if (!double.IsFinite(PhmInitRange) || PhmInitRange < 0) throw new ArgumentOutOfRangeException(nameof(PhmInitRange), PhmInitRange, "phm_init_range is a standard deviation: 0 or more, e.g. 1e-4.");
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

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var (path, baseLayer) = (context.Path, context.BaseLayer);
        var (inWidth, outWidth) = Activations.Widths(baseLayer, path);
        long input = IsParallel && ParallelInput == ParallelInput.LayerInput ? inWidth : outWidth;
        int bottleneck = BottleneckAt(outWidth);
        if (PhmLayer)
            foreach (var (what, width) in new[] { ("input", input), ("output", outWidth), ("bottleneck", (long)bottleneck) })
                if (width % PhmDim != 0)
                    throw new ArgumentOutOfRangeException(nameof(PhmDim), PhmDim,
                        $"'{path}': the adapter's {what} width {width} does not divide by phm_dim {PhmDim}; choose a phm_dim that divides {input}, {outWidth} and {bottleneck} (or set BottleneckSize).");
        var reference = baseLayer.parameters().First();
        return new BottleneckAdapter(this, path, input, outWidth, bottleneck, context.ModelAdapter as PhmRule, reference.dtype, reference.device);
    }

    /// <summary>AdapterHub writes the variant's name, the scaling as a number or a word (with its start value), and two
    /// options this library always has on.</summary>
    protected internal override void WriteFixedFields(JsonObject json)
    {
        json["method"] = MethodName;
        json["scaling"] = ScalingMode == BottleneckScaling.Fixed ? ConfigJson.Float(Scaling) : ScalingOption;
        json["scaling_init"] = ConfigJson.Float(Scaling);
        json["original_ln_after"] = true;
        json["factorized_phm_W"] = true;
    }

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file)
    {
        bool Flag(string field) => json[field] is not JsonValue v || !v.TryGetValue<bool>(out var b) || b;
        if (!Flag("original_ln_after"))
            throw new AdapterConfigException($"{file}: original_ln_after=false is not supported: the model always applies its own residual and LayerNorm after the adapter.");
        if (!Flag("factorized_phm_W"))
            throw new AdapterConfigException($"{file}: factorized_phm_W=false is not supported: PHM layers here factorise B_i = s_i t_iᵀ (phm_rank).");
        double Number(string field, double fallback) => json[field] switch
        {
            null => fallback,
            JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
            var other => throw new AdapterConfigException($"{file}: field '{field}' should be a number but is {other.ToJsonString()}."),
        };
        return json["scaling"] switch
        {
            null => this,
            JsonValue v when v.TryGetValue<string>(out var word) => word switch
            {
                "learned" => this with { ScalingMode = BottleneckScaling.Learned, Scaling = Number("scaling_init", 1.0) },
                "channel" => this with { ScalingMode = BottleneckScaling.Channel, Scaling = Number("scaling_init", 1.0) },
                _ => double.TryParse(word, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d) ? this with { Scaling = d, ScalingMode = BottleneckScaling.Fixed }
                    : throw new AdapterConfigException($"{file}: scaling should be a number, \"learned\" or \"channel\", not \"{word}\"."),
            },
            _ => this with { Scaling = Number("scaling", 1.0), ScalingMode = BottleneckScaling.Fixed },
        };
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".adapter_"];

    protected internal override IReadOnlyList<string> Choices(string option) => option switch
    {
        "activation" => Activations.Names,
        "init" => ["mam_adapter", "bert", "houlsby"],
        "scaling" => ["learned", "channel", "1", "4"],
        _ => [],
    };
}

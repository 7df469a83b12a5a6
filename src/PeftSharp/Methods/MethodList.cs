using System.Globalization;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Methods.LowRank;

namespace PeftSharp.Methods;

/// <summary>One hyperparameter of a method, as the CLI, the magic commands and the docs show it.</summary>
public sealed record MethodParameter(string Name, string Type, string Default, string Description);

/// <summary>A method the library has: its name, family, what it computes, whether it merges, its parameters, and how to
/// make its config from command-line style options (targets null: the method's own default, e.g. Pfeiffer's placement,
/// or none for prompts and prefixes; a method without a default then fails validation asking for them).</summary>
public sealed record MethodInfo(
    string Name,
    string Family,
    string Formula,
    string Papers,
    bool CanMerge,
    IReadOnlyList<MethodParameter> Parameters,
    Func<TargetModules?, IReadOnlyDictionary<string, string>, AdapterConfig> CreateConfig);

/// <summary>
/// The one place a method is announced: the CLI's <c>methods</c>, the notebook commands and completions, and the file
/// reader (<c>peft_type</c> to config) all read this list. Adding a method = its config and layer + an entry here.
/// </summary>
public static class MethodList
{
    static readonly MethodParameter[] LoraParameters =
    [
        new("rank", "int", "8", "r: the rank of B A"),
        new("alpha", "float", "rank", "lora_alpha: scale s = alpha / r"),
        new("dropout", "float", "0", "lora_dropout on the adapter input"),
        new("rslora", "bool", "false", "use_rslora: s = alpha / sqrt(r)"),
        new("init", "string", "true", "init_lora_weights: true | false | gaussian | pissa | pissa_niter_N | olora"),
        new("bias", "string", "none", "none | all | lora_only: which biases train"),
    ];

    static readonly MethodParameter[] BottleneckParameters =
    [
        new("reduction", "float", "16", "reduction_factor: bottleneck = width / reduction"),
        new("size", "int", "", "bottleneck_size: the bottleneck width (overrides reduction)"),
        new("activation", "string", "relu", "non_linearity: relu | gelu | swish | tanh | leakyrelu | identity"),
        new("scaling", "string", "1", "scaling: a number, learned (one scalar) or channel (one per output)"),
        new("ln-before", "bool", "false", "ln_before: a new LayerNorm on the adapter input"),
        new("ln-after", "bool", "false", "ln_after: a new LayerNorm on the adapter output"),
        new("original-ln-before", "bool", "false", "original_ln_before: the adapter sees LN(projection + residual) (BERT projections)"),
        new("residual", "string", "before", "residual_before_ln: before | after | post_add"),
        new("dropout", "float", "0", "dropout on the adapter output"),
        new("init", "string", "mam_adapter", "init_weights: mam_adapter (identity at init) | bert | houlsby"),
        new("kernel", "int", "", "conv_kernel_size: a depthwise convolution over the sequence (odd)"),
        new("phm-dim", "int", "4", "phm_dim: n Kronecker terms (Compacter)"),
        new("phm-rank", "int", "1", "phm_rank: rank of each B_i (Compacter)"),
        new("parallel-input", "string", "sublayer", "what a parallel adapter reads: sublayer | layer"),
    ];

    static readonly MethodParameter[] InvertibleParameters =
    [
        new("inverse", "string", "", "inverse_modules: comma-separated targets (the tied output head) whose input goes through the inverse"),
        new("reduction", "float", "2", "inv_adapter_reduction_factor: F and G are d/2 → d/2/reduction → d/2"),
        new("activation", "string", "relu", "non_linearity of F and G"),
    ];

    static readonly MethodParameter[] PromptParameters =
    [
        new("tokens", "int", "20", "num_virtual_tokens: P"),
        new("init", "string", "random", "prompt_tuning_init: random | sample_vocab (text needs token ids: use the library)"),
    ];

    static readonly MethodParameter[] PrefixParameters =
    [
        new("tokens", "int", "20", "num_virtual_tokens: P"),
        new("projection", "bool", "false", "prefix_projection: reparameterise by an MLP"),
        new("hidden", "int", "", "encoder_hidden_size of the MLP (default: the model width)"),
    ];

    static readonly MethodParameter[] CompositionParameters =
    [
        new("sources", "string", "", "source_adapters: comma-separated names of the frozen adapters to compose"),
        new("kind", "string", "vector", "scalearn_kind: vector | scalar | vector_shared | scalar_shared"),
        new("init", "float", "1/K", "init_scale: the start value of every scale"),
    ];

    static readonly MethodParameter[] IA3Parameters =
    [
        new("feedforward", "string", "", "feedforward_modules: comma-separated targets whose input is scaled (e.g. output.dense)"),
    ];

    public static IReadOnlyList<MethodInfo> All { get; } =
    [
        new("lora", "LowRank", "y = W x + s·B A x, A Kaiming-uniform, B = 0", "Hu et al. 2021 (LoRA); Kalajdzievski 2023 (rsLoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options)),
        new("dora", "LowRank", "W' = m·(W + s·B A) / ||W + s·B A||_row", "Liu et al. 2024 (DoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { UseDora = true }),
        new("pissa", "LowRank", "B A = top-r SVD of W, base keeps W - s·B A", "Meng et al. 2024 (PiSSA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { InitLoraWeights = LoraInit.Parse(Option(options, "init", "pissa")) }),
        new("olora", "LowRank", "B A = first r columns/rows of QR(W), base keeps the residual", "Büyükakyüz 2024 (OLoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { InitLoraWeights = LoraInit.Olora }),
        new("bottleneck", "Bottleneck", "h + s·W_up f(W_down h) after the target, W_up = 0", "Houlsby et al. 2019; Pfeiffer et al. 2020 (AdapterHub)", false,
            BottleneckParameters, (targets, options) => Bottleneck(new BottleneckConfig(), targets, options)),
        new("pfeiffer", "Bottleneck", "after the FFN on LN(FFN + residual), ReLU, reduction 16", "Pfeiffer et al. 2021 (AdapterFusion)", false,
            BottleneckParameters, (targets, options) => Bottleneck(BottleneckConfig.Pfeiffer(), targets, options)),
        new("houlsby", "Bottleneck", "after attention and FFN projections, swish, reduction 16", "Houlsby et al. 2019", false,
            BottleneckParameters, (targets, options) => Bottleneck(BottleneckConfig.Houlsby(), targets, options)),
        new("parallel-adapter", "Bottleneck", "F(x) + s·W_up f(W_down x), x the sublayer input, s = 4", "He et al. 2022; Chen et al. 2022 (AdaptFormer)", false,
            BottleneckParameters, (targets, options) => Bottleneck(BottleneckConfig.Parallel(), targets, options)),
        new("conv-adapter", "Bottleneck", "h + W_up f(DWConv_k(W_down h)) over the sequence", "Cappellazzo et al. 2024 (AST PETL)", false,
            BottleneckParameters, (targets, options) => Bottleneck(new BottleneckConfig { ConvKernelSize = 3 }, targets, options)),
        new("compacter", "Bottleneck", "Houlsby placement, W = Σ_i A_i ⊗ (s_i t_iᵀ), A_i shared", "Mahabadi et al. 2021 (Compacter)", false,
            BottleneckParameters, (targets, options) => Bottleneck(BottleneckConfig.Compacter(), targets, options)),
        new("compacter++", "Bottleneck", "Compacter with Pfeiffer's placement (after the FFN only)", "Mahabadi et al. 2021 (Compacter++)", false,
            BottleneckParameters, (targets, options) => Bottleneck(BottleneckConfig.CompacterPlusPlus(), targets, options)),
        new("invertible", "Bottleneck", "NICE coupling on the embeddings, o1 = e1 + F(e2), o2 = e2 + G(o1); inverse before a tied head", "Pfeiffer et al. 2020 (MAD-X)", false,
            InvertibleParameters, (targets, options) => Invertible(targets, options)),
        new("bitfit", "Activation", "only biases train: b + Δb, Δb = 0 at init", "Ben Zaken et al. 2022 (BitFit)", true,
            [], (targets, options) => Checked("bitfit", options, [], targets is null ? new BitFitConfig() : new BitFitConfig { TargetModules = targets })),
        new("ln-tuning", "Activation", "a trainable copy of each LayerNorm (gain and bias)", "Zhao et al. 2023 (LN tuning)", true,
            [], (targets, options) => Checked("ln-tuning", options, [], new LnTuningConfig { TargetModules = targets })),
        new("prompt-tuning", "Activation", "P trainable embeddings before the input embeddings", "Lester et al. 2021", false,
            PromptParameters, (_, options) => Prompt(options)),
        new("prefix-tuning", "Activation", "per layer K' = [P_K; K], V' = [P_V; V], optionally P = MLP(P')", "Li and Liang 2021", false,
            PrefixParameters, (_, options) => Prefix(options)),
        new("scalearn", "Activation", "o = h + Σ_k λ_k ⊙ Δ_k(h) over frozen source adapters; λ vector/scalar, per layer or shared", "Frohmann et al. 2023 (ScaLearn)", false,
            CompositionParameters, (targets, options) => ScaLearn(targets, options)),
        new("adapter-fusion", "Activation", "o = h + Σ_k softmax_k((Q h)·(K Δ_k)) V Δ_k over frozen source adapters", "Pfeiffer et al. 2021 (AdapterFusion)", false,
            CompositionParameters.Take(1).ToArray(), (targets, options) => Checked("adapter-fusion", options, CompositionParameters.Take(1).ToArray(),
                new AdapterFusionConfig { TargetModules = targets, SourceAdapters = Names(options, "sources")?.Names ?? [] })),
        new("ia3", "Activation", "k = l_k ⊙ W_k x, v = l_v ⊙ W_v x, FFN W_2 (l_ff ⊙ f(W_1 x)), l = 1 at init", "Liu et al. 2022 ((IA)³)", true,
            IA3Parameters, (targets, options) => IA3(targets, options)),
    ];

    /// <summary>PEFT <c>peft_type</c> → reader of that config from <c>adapter_config.json</c>.</summary>
    static readonly Dictionary<string, Func<JsonObject, string, AdapterConfig>> Readers = new()
    {
        ["LORA"] = LoraConfig.FromPeftJson,
        ["IA3"] = IA3Config.FromPeftJson,
        ["BOTTLENECK"] = BottleneckConfig.FromPeftJson,
        ["INVERTIBLE"] = InvertibleAdapterConfig.FromPeftJson,
        ["BITFIT"] = BitFitConfig.FromPeftJson,
        ["LN_TUNING"] = LnTuningConfig.FromPeftJson,
        ["PROMPT_TUNING"] = PromptTuningConfig.FromPeftJson,
        ["PREFIX_TUNING"] = PrefixTuningConfig.FromPeftJson,
        ["SCALEARN"] = ScaLearnConfig.FromPeftJson,
        ["ADAPTER_FUSION"] = AdapterFusionConfig.FromPeftJson,
    };

    public static IReadOnlyCollection<string> PeftTypes => Readers.Keys;

    /// <summary>The method named <paramref name="name"/> (case-insensitive); throws listing the known names.</summary>
    public static MethodInfo Find(string name) =>
        All.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown method '{name}'. Methods: {string.Join(", ", All.Select(m => m.Name))}.", nameof(name));

    /// <summary>Reads a config object of any method this library reads, dispatching on <c>peft_type</c>.</summary>
    public static AdapterConfig ConfigFromPeftJson(JsonObject json, string file)
    {
        var peftType = json["peft_type"] is JsonValue v && v.TryGetValue<string>(out var t) ? t
            : throw new AdapterConfigException($"{file}: no peft_type; a PEFT adapter_config.json names its method there (e.g. \"LORA\").");
        return Readers.TryGetValue(peftType, out var read) ? read(json, file)
            : throw new AdapterConfigException($"{file}: peft_type '{peftType}' is not one PeftSharp reads; it reads {string.Join(", ", Readers.Keys)}.");
    }

    static LoraConfig Lora(TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        var known = LoraParameters.Select(p => p.Name).ToHashSet();
        var unknown = options.Keys.Where(k => !known.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Unknown LoRA option(s) {string.Join(", ", unknown)}; options: {string.Join(", ", known)}.");
        int rank = int.Parse(Option(options, "rank", "8"), CultureInfo.InvariantCulture);
        return new LoraConfig
        {
            TargetModules = targets,
            R = rank,
            LoraAlpha = double.Parse(Option(options, "alpha", rank.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture),
            LoraDropout = double.Parse(Option(options, "dropout", "0"), CultureInfo.InvariantCulture),
            UseRslora = bool.Parse(Option(options, "rslora", "false")),
            InitLoraWeights = LoraInit.Parse(Option(options, "init", "true")),
            Bias = Option(options, "bias", "none"),
        };
    }

    static void CheckKnown(string method, IReadOnlyDictionary<string, string> options, IEnumerable<MethodParameter> parameters)
    {
        var known = parameters.Select(p => p.Name).ToHashSet();
        var unknown = options.Keys.Where(k => !known.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Unknown {method} option(s) {string.Join(", ", unknown)}; options: {(known.Count == 0 ? "none" : string.Join(", ", known))}.");
    }

    static double Number(IReadOnlyDictionary<string, string> options, string name, double fallback) =>
        options.TryGetValue(name, out var v) ? double.Parse(v, CultureInfo.InvariantCulture) : fallback;

    static bool Flag(IReadOnlyDictionary<string, string> options, string name, bool fallback) =>
        options.TryGetValue(name, out var v) ? bool.Parse(v) : fallback;

    static BottleneckConfig Bottleneck(BottleneckConfig preset, TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        CheckKnown(preset.MethodName, options, BottleneckParameters);
        var scaling = Option(options, "scaling", preset.ScalingMode switch { BottleneckScaling.Learned => "learned", BottleneckScaling.Channel => "channel", _ => preset.Scaling.ToString(CultureInfo.InvariantCulture) });
        return preset with
        {
            TargetModules = targets ?? preset.TargetModules,   // null: the preset's own placement (Pfeiffer: after the FFN)
            ReductionFactor = Number(options, "reduction", preset.ReductionFactor),
            BottleneckSize = options.TryGetValue("size", out var size) ? int.Parse(size, CultureInfo.InvariantCulture) : preset.BottleneckSize,
            NonLinearity = Option(options, "activation", preset.NonLinearity),
            ScalingMode = scaling switch { "learned" => BottleneckScaling.Learned, "channel" => BottleneckScaling.Channel, _ => BottleneckScaling.Fixed },
            Scaling = scaling is "learned" or "channel" ? preset.Scaling : double.Parse(scaling, CultureInfo.InvariantCulture),
            LnBefore = Flag(options, "ln-before", preset.LnBefore),
            LnAfter = Flag(options, "ln-after", preset.LnAfter),
            OriginalLnBefore = Flag(options, "original-ln-before", preset.OriginalLnBefore),
            ResidualBeforeLn = Option(options, "residual", "") switch
            {
                "" => preset.ResidualBeforeLn,
                "before" or "true" => ResidualSource.BeforeLayerNorm,
                "after" or "false" => ResidualSource.AfterLayerNorm,
                "post_add" => ResidualSource.PostAdd,
                var other => throw new ArgumentException($"residual must be before, after or post_add, not '{other}'."),
            },
            Dropout = Number(options, "dropout", preset.Dropout),
            InitWeights = Option(options, "init", preset.InitWeights),
            ConvKernelSize = options.TryGetValue("kernel", out var kernel) ? int.Parse(kernel, CultureInfo.InvariantCulture) : preset.ConvKernelSize,
            PhmDim = (int)Number(options, "phm-dim", preset.PhmDim),
            PhmRank = (int)Number(options, "phm-rank", preset.PhmRank),
            ParallelInput = Option(options, "parallel-input", preset.ParallelInput == ParallelInput.SublayerInput ? "sublayer" : "layer") switch
            {
                "sublayer" => ParallelInput.SublayerInput,
                "layer" => ParallelInput.LayerInput,
                var other => throw new ArgumentException($"parallel-input must be sublayer or layer, not '{other}'."),
            },
        };
    }

    static T Checked<T>(string method, IReadOnlyDictionary<string, string> options, MethodParameter[] parameters, T config)
    {
        CheckKnown(method, options, parameters);
        return config;
    }

    static TargetModules? Names(IReadOnlyDictionary<string, string> options, string name) =>
        options.TryGetValue(name, out var list) && list.Length > 0
            ? TargetModules.List(list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)) : null;

    static InvertibleAdapterConfig Invertible(TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        CheckKnown("invertible", options, InvertibleParameters);
        return new InvertibleAdapterConfig
        {
            TargetModules = targets,
            InverseModules = Names(options, "inverse"),
            ReductionFactor = Number(options, "reduction", 2),
            NonLinearity = Option(options, "activation", "relu"),
        };
    }

    static PromptTuningConfig Prompt(IReadOnlyDictionary<string, string> options)
    {
        CheckKnown("prompt-tuning", options, PromptParameters);
        return new PromptTuningConfig
        {
            NumVirtualTokens = (int)Number(options, "tokens", 20),
            PromptTuningInit = Option(options, "init", "random").ToLowerInvariant() switch
            {
                "random" => PromptTuningInit.Random,
                "sample_vocab" => PromptTuningInit.SampleVocab,
                var other => throw new ArgumentException($"init must be random or sample_vocab, not '{other}' (TEXT needs token ids: set PromptTuningConfig.InitTokenIds in code)."),
            },
        };
    }

    static PrefixTuningConfig Prefix(IReadOnlyDictionary<string, string> options)
    {
        CheckKnown("prefix-tuning", options, PrefixParameters);
        return new PrefixTuningConfig
        {
            NumVirtualTokens = (int)Number(options, "tokens", 20),
            PrefixProjection = Flag(options, "projection", false),
            EncoderHiddenSize = options.TryGetValue("hidden", out var hidden) ? int.Parse(hidden, CultureInfo.InvariantCulture) : null,
        };
    }

    static ScaLearnConfig ScaLearn(TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        CheckKnown("scalearn", options, CompositionParameters);
        return new ScaLearnConfig
        {
            TargetModules = targets,
            SourceAdapters = Names(options, "sources")?.Names ?? [],
            Kind = Option(options, "kind", "vector") switch
            {
                "vector" => ScaLearnKind.Vector,
                "scalar" => ScaLearnKind.Scalar,
                "vector_shared" => ScaLearnKind.SharedVector,
                "scalar_shared" => ScaLearnKind.SharedScalar,
                var other => throw new ArgumentException($"kind must be vector, scalar, vector_shared or scalar_shared, not '{other}'."),
            },
            InitialScale = options.TryGetValue("init", out var init) ? double.Parse(init, CultureInfo.InvariantCulture) : null,
        };
    }

    static IA3Config IA3(TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        CheckKnown("ia3", options, IA3Parameters);
        return new IA3Config
        {
            TargetModules = targets,
            FeedforwardModules = Names(options, "feedforward"),
        };
    }

    static string Option(IReadOnlyDictionary<string, string> options, string name, string fallback) =>
        options.TryGetValue(name, out var value) ? value : fallback;
}

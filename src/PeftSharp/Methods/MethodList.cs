using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Methods.Decomposition;
using PeftSharp.Methods.LowRank;
using PeftSharp.Methods.Routing;

namespace PeftSharp.Methods;

/// <summary>One hyperparameter of a method, as the CLI, the magic commands and the docs show it; made from the config
/// property's <c>[Option]</c> and <c>[JsonPropertyName]</c> (see <see cref="ConfigOptions"/>).</summary>
/// <param name="Name">The option name without dashes, e.g. "rank".</param>
/// <param name="Type">int, float, bool, string, list or choice.</param>
/// <param name="Default">The method preset's value, as text.</param>
/// <param name="Description">Help, with the valid range.</param>
/// <param name="JsonName">The field in <c>adapter_config.json</c>, e.g. "r".</param>
/// <param name="Choices">The values it takes, where they are a closed list (completions offer them).</param>
public sealed record MethodParameter(string Name, string Type, string Default, string Description, string JsonName = "", IReadOnlyList<string>? Choices = null);

/// <summary>
/// A method the library has: its name, family, what it computes, the papers, and its preset (a config with the
/// method's defaults: Pfeiffer's placement, PiSSA's init, ...). Everything else comes from the config type: whether it
/// merges, its parameters (<see cref="ConfigOptions"/>), its file (<see cref="ConfigJson"/>), its inspection.
/// </summary>
public sealed record MethodInfo(string Name, string Family, string Formula, string Papers, Func<AdapterConfig> Preset)
{
    /// <summary>The config type (several methods may share one: LoRA, DoRA, PiSSA and OLoRA are <see cref="LoraConfig"/>).</summary>
    public Type ConfigType => Preset().GetType();

    /// <summary>Whether the method folds into the weights (<see cref="AdapterConfig.Merges"/>).</summary>
    public bool CanMerge => Preset().Merges;

    /// <summary>The method's own options, with the preset's values as defaults.</summary>
    public IReadOnlyList<MethodParameter> Parameters => ConfigOptions.Parameters(Preset());

    /// <summary>
    /// The method's config from command-line style options (option name → text, as <c>#!peft attach</c> and the Lab
    /// take them). <paramref name="targets"/> null keeps the preset's own targets (Pfeiffer's placement; none for a
    /// method without a default, which then fails validation asking for them).
    /// </summary>
    public AdapterConfig CreateConfig(TargetModules? targets, IReadOnlyDictionary<string, string> options)
    {
        var config = ConfigOptions.Bind(Preset(), options, Name);
        return targets is null ? config : config with { TargetModules = targets };
    }
}

/// <summary>
/// The one place a method is announced: one <see cref="Register"/> line each. The CLI's <c>methods</c>, the notebook
/// commands and completions, and the file reader (<c>peft_type</c> to config type) all read this list. Adding a method =
/// its config, its layer and a line here (or a <see cref="Register"/> call from another assembly).
/// </summary>
public static class MethodList
{
    static readonly List<MethodInfo> Methods = [];
    static readonly Lock Gate = new();

    static MethodList()
    {
        Register("lora", "LowRank", "y = W x + s·B A x, A Kaiming-uniform, B = 0", "Hu et al. 2021 (LoRA); Kalajdzievski 2023 (rsLoRA)", () => new LoraConfig());
        Register("dora", "LowRank", "W' = m·(W + s·B A) / ||W + s·B A||_row", "Liu et al. 2024 (DoRA)", () => new LoraConfig { UseDora = true });
        Register("pissa", "LowRank", "B A = top-r SVD of W, base keeps W - s·B A", "Meng et al. 2024 (PiSSA)", () => new LoraConfig { InitLoraWeights = LoraInit.Pissa });
        Register("olora", "LowRank", "B A = first r columns/rows of QR(W), base keeps the residual", "Büyükakyüz 2024 (OLoRA)", () => new LoraConfig { InitLoraWeights = LoraInit.Olora });
        Register("adalora", "LowRank", "W x + α/r₀·P diag(E) Q x; triplets of lowest |p·∇p| importance pruned to a cubic budget", "Zhang et al. 2023 (AdaLoRA)", () => new AdaLoraConfig());
        Register("increlora", "LowRank", "W x + α/r₀·P diag(E) Q x starting at r₀; every deltaT steps the top_h modules by mean triplet importance get one more rank-1 triplet (λ = 0, warmed up)", "Zhang et al. 2023 (IncreLoRA)", () => new IncreLoraConfig());
        Register("spt", "LowRank", "s = Σ_b (∂L_b/∂W)², global top-τ; matrices with > σ_opt sensitive entries get LoRA, the others a sparse ΔW on those entries", "He et al. 2023 (SPT)", () => new SptConfig());
        Register("bottleneck", "Bottleneck", "h + s·W_up f(W_down h) after the target, W_up = 0", "Houlsby et al. 2019; Pfeiffer et al. 2020 (AdapterHub)", () => new BottleneckConfig());
        Register("pfeiffer", "Bottleneck", "after the FFN on LN(FFN + residual), ReLU, reduction 16", "Pfeiffer et al. 2021 (AdapterFusion)", () => BottleneckConfig.Pfeiffer());
        Register("houlsby", "Bottleneck", "after attention and FFN projections, swish, reduction 16", "Houlsby et al. 2019", () => BottleneckConfig.Houlsby());
        Register("parallel-adapter", "Bottleneck", "F(x) + s·W_up f(W_down x), x the sublayer input, s = 4", "He et al. 2022; Chen et al. 2022 (AdaptFormer)", () => BottleneckConfig.Parallel());
        Register("conv-adapter", "Bottleneck", "h + W_up f(DWConv_k(W_down h)) over the sequence", "Cappellazzo et al. 2024 (AST PETL)", () => new BottleneckConfig { ConvKernelSize = 3 });
        Register("compacter", "Bottleneck", "Houlsby placement, W = Σ_i A_i ⊗ (s_i t_iᵀ), A_i shared", "Mahabadi et al. 2021 (Compacter)", () => BottleneckConfig.Compacter());
        Register("compacter++", "Bottleneck", "Compacter with Pfeiffer's placement (after the FFN only)", "Mahabadi et al. 2021 (Compacter++)", () => BottleneckConfig.CompacterPlusPlus());
        Register("invertible", "Bottleneck", "NICE coupling on the embeddings, o1 = e1 + F(e2), o2 = e2 + G(o1); inverse before a tied head", "Pfeiffer et al. 2020 (MAD-X)", () => new InvertibleAdapterConfig());
        Register("bitfit", "Activation", "only biases train: b + Δb, Δb = 0 at init", "Ben Zaken et al. 2022 (BitFit)", () => new BitFitConfig());
        Register("ln-tuning", "Activation", "a trainable copy of each LayerNorm (gain and bias)", "Zhao et al. 2023 (LN tuning)", () => new LnTuningConfig());
        Register("prompt-tuning", "Activation", "P trainable embeddings before the input embeddings", "Lester et al. 2021", () => new PromptTuningConfig());
        Register("prefix-tuning", "Activation", "per layer K' = [P_K; K], V' = [P_V; V], optionally P = MLP(P')", "Li and Liang 2021", () => new PrefixTuningConfig());
        Register("scalearn", "Activation", "o = h + Σ_k λ_k ⊙ Δ_k(h) over frozen source adapters; λ vector/scalar, per layer or shared", "Frohmann et al. 2023 (ScaLearn)", () => new ScaLearnConfig());
        Register("adapter-fusion", "Activation", "o = h + Σ_k softmax_k((Q h)·(K Δ_k)) V Δ_k over frozen source adapters", "Pfeiffer et al. 2021 (AdapterFusion)", () => new AdapterFusionConfig());
        Register("ia3", "Activation", "k = l_k ⊙ W_k x, v = l_v ⊙ W_v x, FFN W_2 (l_ff ⊙ f(W_1 x)), l = 1 at init", "Liu et al. 2022 ((IA)³)", () => new IA3Config());
        Register("sorsa", "Decomposition", "W_r + U_p diag(s_p) V_pᵀ from the top-r SVD; U_p, s_p, V_p train, + γ(‖U_pᵀU_p − I‖ + ‖V_pV_pᵀ − I‖)", "Cao 2024 (SORSA)", () => new SorsaConfig());
        Register("svfit", "Decomposition", "ΔW = U_r diag(s − s₀) V_rᵀ: only the top-r singular values train, r by 99% energy or given", "Sun et al. 2024 (SVFit)", () => new SvfitConfig());
        Register("loldu", "Decomposition", "W = P L D U; ΔW = P L_r diag(s·z − D_r) U_r: only z (r) and s train", "Shi et al. 2024 (LoLDU)", () => new LolduConfig());
        Register("hydra", "Decomposition", "y = W x + s·B_p A_p x + s·B_s A_s (W x), B = 0; W' = W + s(B_p A_p + B_s A_s W)", "Kim et al. 2024 (Hydra)", () => new HydraConfig());
        Register("soka", "Decomposition", "W_res + Σ_k A_k ⊗ B_k from KPSVD of R(W) (Van Loan); K by energy, elbow or given; A_k, B_k train", "SoKA; Van Loan and Pitsianis 1993 (KPSVD)", () => new SokaConfig());
        Register("transformed-lora", "Decomposition", "W' = W (I + ΔT) + s·B A: ΔT a two-core tensor train Σ G¹_k ⊗ G²_k (G² = 0), B = 0", "Transformed LoRA (tensor decomposition)", () => new TransformedLoraConfig());
        Register("corda", "Decomposition", "IPM: B A = the r largest components of SVD(W C), C the input covariance (calibration); base keeps the residual", "Yang et al. 2024 (CorDA)",
            () => new LoraConfig { InitLoraWeights = LoraInit.Corda, CordaConfig = new CordaConfig { CordaMethod = "ipm" } });
        Register("corda-kpm", "Decomposition", "KPM: B A = the r smallest components of SVD(W C); the large, knowledge-carrying ones stay frozen", "Yang et al. 2024 (CorDA)",
            () => new LoraConfig { InitLoraWeights = LoraInit.Corda, CordaConfig = new CordaConfig { CordaMethod = "kpm" } });
        Register("poly", "Routing", "K LoRA skills per layer; task t mixes them, w_t = z_t / Σ z_t, z = sigmoid(Z_t) (relaxed Bernoulli in training); y = W x + x A_t B_t / r", "Ponti et al. 2023 (Polytropon)", () => new PolyConfig());
        Register("mhr", "Routing", "Poly with one routing per block of features (n_splits heads)", "Caccia et al. 2023 (Multi-Head Routing)", () => new PolyConfig { NSplits = 4 });
        Register("mtlora", "Routing", "y_t = W x + s_sh·B_sh A_sh x + s_t·B_t A_t x, t the row's task id (shared branch alone without one)", "Agiza et al. 2024 (MTLoRA)", () => new MtLoraConfig());
        Register("mola", "Routing", "y = W x + Σ_{i∈top-k} w_i s·B_i A_i x, w = softmax(W_r x) renormalised over the top k; experts per layer uniform / triangle / inverted / hourglass / list; load-balancing loss", "Gao et al. 2024 (MoLA)", () => new MolaConfig());
        Register("earth-adapter", "Routing", "h + s·Σ_i w_i E_i(band_i), bands = (h, FFT low, FFT high) of the token grid, w = softmax(W_r h)", "Hu et al. 2025 (Earth-Adapter)", () => new EarthAdapterConfig());
    }

    /// <summary>Every method, in the order registered.</summary>
    public static IReadOnlyList<MethodInfo> All
    {
        get { lock (Gate) return Methods.ToList(); }
    }

    /// <summary>Announces a method. Its name must be new; its config type must be creatable with no arguments (the file
    /// reader makes one per <c>peft_type</c>), and a <c>peft_type</c> belongs to one config type.</summary>
    public static MethodInfo Register(string name, string family, string formula, string papers, Func<AdapterConfig> preset)
    {
        var method = new MethodInfo(name, family, formula, papers, preset);
        var config = preset();
        lock (Gate)
        {
            if (Methods.Any(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase)))
                throw new ArgumentException($"A method named '{name}' is already registered.", nameof(name));
            if (Methods.Select(m => m.Preset()).FirstOrDefault(c => c.PeftType == config.PeftType && c.GetType() != config.GetType()) is { } clash)
                throw new ArgumentException($"peft_type '{config.PeftType}' already belongs to {clash.GetType().Name}; {config.GetType().Name} needs its own.", nameof(preset));
            if (config.GetType().GetConstructor(Type.EmptyTypes) is null)
                throw new ArgumentException($"{config.GetType().Name} needs a public parameterless constructor so that files can be read into it.", nameof(preset));
            Methods.Add(method);
        }
        return method;
    }

    /// <summary>The PEFT <c>peft_type</c> values this library reads, each with its config type.</summary>
    public static IReadOnlyDictionary<string, Type> PeftTypes =>
        All.Select(m => m.Preset()).GroupBy(c => c.PeftType).ToDictionary(g => g.Key, g => g.First().GetType());

    /// <summary>The method named <paramref name="name"/> (case-insensitive); throws listing the known names.</summary>
    public static MethodInfo Find(string name) =>
        All.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown method '{name}'. Methods: {string.Join(", ", All.Select(m => m.Name))}.", nameof(name));

    /// <summary>Reads a config object of any registered method, dispatching on <c>peft_type</c>.</summary>
    public static AdapterConfig ConfigFromPeftJson(JsonObject json, string file)
    {
        var peftType = json["peft_type"] is JsonValue v && v.TryGetValue<string>(out var t) ? t
            : throw new AdapterConfigException($"{file}: no peft_type; a PEFT adapter_config.json names its method there (e.g. \"LORA\").");
        var types = PeftTypes;
        return types.TryGetValue(peftType, out var type) ? ConfigJson.Read(json, type, file)
            : throw new AdapterConfigException($"{file}: peft_type '{peftType}' is not one PeftSharp reads; it reads {string.Join(", ", types.Keys)}.");
    }
}

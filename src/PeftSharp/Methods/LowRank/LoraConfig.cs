using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>How LoRA's A and B start (PEFT <c>init_lora_weights</c>).</summary>
public sealed record LoraInit
{
    LoraInit(string name) => Name = name;

    /// <summary>The value as PEFT writes it: "true", "false", "gaussian", "pissa", "pissa_niter_N", "olora", ...</summary>
    public string Name { get; }

    /// <summary>PEFT <c>True</c>: A Kaiming-uniform (a = sqrt 5), B = 0, so the adapter starts as the identity.</summary>
    public static LoraInit Default { get; } = new("true");

    /// <summary>PEFT <c>"gaussian"</c>: A ~ N(0, 1/r), B = 0.</summary>
    public static LoraInit Gaussian { get; } = new("gaussian");

    /// <summary>PEFT <c>False</c>: A and B both random, so the adapter changes the output from the start (for tests).</summary>
    public static LoraInit Random { get; } = new("false");

    /// <summary>PiSSA (Meng et al. 2024): A, B from the top-r singular triplets of W; W keeps the residual.</summary>
    public static LoraInit Pissa { get; } = new("pissa");

    /// <summary>PiSSA with a randomised SVD of <paramref name="iterations"/> subspace iterations (fast on big layers).</summary>
    public static LoraInit PissaNiter(int iterations) =>
        iterations >= 0 ? new($"pissa_niter_{iterations}") : throw new ArgumentOutOfRangeException(nameof(iterations), "pissa_niter needs 0 or more iterations.");

    /// <summary>OLoRA (Büyükakyüz 2024): A, B from the QR decomposition of W; W keeps the residual.</summary>
    public static LoraInit Olora { get; } = new("olora");

    /// <summary>True for the initialisations that rewrite the base weight as a residual (PiSSA, OLoRA).</summary>
    public bool ChangesBaseWeights => Name.StartsWith("pissa", StringComparison.Ordinal) || Name == "olora";

    /// <summary>The subspace iterations of a <c>pissa_niter_N</c> init, else null.</summary>
    public int? PissaIterations => Name.StartsWith("pissa_niter_", StringComparison.Ordinal) && int.TryParse(Name["pissa_niter_".Length..], out var n) ? n : null;

    /// <summary>Whether this library can run the initialisation (others, e.g. "loftq" or "eva", can still be loaded).</summary>
    public bool IsSupported => this == Default || this == Gaussian || this == Random || this == Pissa || this == Olora || PissaIterations is not null;

    public static readonly IReadOnlyList<string> SupportedNames = ["true", "false", "gaussian", "pissa", "pissa_niter_N", "olora"];

    public static LoraInit Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "true" or "default" => Default,
        "false" or "random" => Random,
        var other => new LoraInit(other),
    };

    public JsonNode ToJson() => Name switch { "true" => true, "false" => false, _ => Name };

    public override string ToString() => Name;
}

/// <summary>
/// LoRA (Hu et al. 2021): y = W x + s·B A x with A ∈ R^{r×in}, B ∈ R^{out×r}, s = alpha / r (rsLoRA: alpha / √r),
/// plus DoRA (Liu et al. 2024, <see cref="UseDora"/>) and the PiSSA / OLoRA initialisations. Field names and
/// defaults follow Hugging Face PEFT's <c>LoraConfig</c>, and so does the file it writes.
/// </summary>
public sealed record LoraConfig : AdapterConfig
{
    /// <summary>PEFT <c>r</c>: the rank of the update.</summary>
    public int R { get; init; } = 8;

    /// <summary>PEFT <c>lora_alpha</c>: the scale numerator.</summary>
    public double LoraAlpha { get; init; } = 8;

    /// <summary>PEFT <c>lora_dropout</c>: dropout on the adapter's input during training.</summary>
    public double LoraDropout { get; init; }

    /// <summary>PEFT <c>use_rslora</c>: scale by alpha / √r (Kalajdzievski 2023), which keeps learning stable as r grows.</summary>
    public bool UseRslora { get; init; }

    /// <summary>PEFT <c>use_dora</c>: weight-decomposed LoRA, W' = m · (W + s B A) / ‖W + s B A‖ (row norms).</summary>
    public bool UseDora { get; init; }

    /// <summary>PEFT <c>init_lora_weights</c>.</summary>
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;

    /// <summary>PEFT <c>bias</c>: "none", "all" (every bias of the model trains and is saved) or "lora_only"
    /// (the biases of the adapted layers).</summary>
    public string Bias { get; init; } = "none";

    /// <summary>PEFT <c>lora_bias</c>: give B a bias (zero at init).</summary>
    public bool LoraBias { get; init; }

    /// <summary>PEFT <c>rank_pattern</c>: per-module ranks, keyed by module name or regex.</summary>
    public IReadOnlyDictionary<string, int>? RankPattern { get; init; }

    /// <summary>PEFT <c>alpha_pattern</c>: per-module alphas, keyed by module name or regex.</summary>
    public IReadOnlyDictionary<string, double>? AlphaPattern { get; init; }

    public override string MethodName => UseDora ? "dora" : "lora";

    public override string PeftType => "LORA";

    public override string SupportedLayerTypes => UseDora || InitLoraWeights.ChangesBaseWeights ? "Linear" : "Linear, Embedding";

    public override bool CanHold(Module module) =>
        module is Linear || (module is Embedding && !UseDora && !InitLoraWeights.ChangesBaseWeights);

    /// <summary>The rank at the module <paramref name="path"/> (rank_pattern, else r).</summary>
    public int RankAt(string path) => PatternKey.Resolve(RankPattern, path, R);

    /// <summary>The scale s at <paramref name="path"/>: alpha / r, or alpha / √r with rsLoRA.</summary>
    public double ScalingAt(string path)
    {
        int r = RankAt(path);
        double alpha = PatternKey.Resolve(AlphaPattern, path, LoraAlpha);
        return UseRslora ? alpha / Math.Sqrt(r) : alpha / r;
    }

    public override void Validate()
    {
        base.Validate();
        if (R <= 0) throw new ArgumentOutOfRangeException(nameof(R), R, "r (the LoRA rank) must be a positive integer, typically 4 to 64.");
        if (RankPattern?.FirstOrDefault(p => p.Value <= 0) is { Key: not null } badRank)
            throw new ArgumentOutOfRangeException(nameof(RankPattern), badRank.Value, $"rank_pattern['{badRank.Key}'] must be a positive rank.");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(LoraDropout), LoraDropout, "lora_dropout is a probability in [0, 1).");
        if (double.IsNaN(LoraAlpha) || LoraAlpha == 0) throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha, "lora_alpha must be a non-zero number (commonly r or 2r).");
        if (Bias is not ("none" or "all" or "lora_only")) throw new ArgumentOutOfRangeException(nameof(Bias), Bias, "bias must be \"none\", \"all\" or \"lora_only\".");
        if (UseDora && LoraBias) throw new ArgumentException("use_dora and lora_bias cannot be combined (as in PEFT): choose one.", nameof(LoraBias));
        if (UseDora && InitLoraWeights.ChangesBaseWeights)
            throw new ArgumentException($"use_dora with init_lora_weights '{InitLoraWeights.Name}' is not supported here: use DoRA with the default init, or PiSSA/OLoRA without DoRA.", nameof(UseDora));
    }

    /// <summary>Checks that the initialisation can run here (files with other inits can still be loaded).</summary>
    public void ValidateInit()
    {
        if (!InitLoraWeights.IsSupported)
            throw new ArgumentOutOfRangeException(nameof(InitLoraWeights), InitLoraWeights.Name,
                $"init_lora_weights '{InitLoraWeights.Name}' is not available here; choose one of {string.Join(", ", LoraInit.SupportedNames)}.");
    }

    public override AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize)
    {
        if (initialize) ValidateInit();
        int r = RankAt(path);
        var weight = AdapterModule.BaseWeight(baseLayer);
        long fanOut = weight.shape[0], fanIn = weight.shape[1];
        if (r > Math.Min(fanOut, fanIn))
            throw new ArgumentOutOfRangeException(nameof(R), r,
                $"rank {r} does not fit '{path}' ({baseLayer.GetType().Name} {fanOut}x{fanIn}): a low-rank update there has rank at most {Math.Min(fanOut, fanIn)}.");
        double scaling = ScalingAt(path);
        return baseLayer switch
        {
            TorchSharp.Modules.Embedding => new LoraEmbeddingAdapter(r, scaling, weight, initialize ? InitLoraWeights : null),
            _ when UseDora => new DoraLinearAdapter(r, scaling, LoraDropout, LoraBias, weight, initialize ? InitLoraWeights : null),
            _ => new LoraLinearAdapter(r, scaling, LoraDropout, LoraBias, weight, initialize ? InitLoraWeights : null),
        };
    }

    public override IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => Bias switch
    {
        "all" => parameterPaths.Where(p => p == "bias" || p.EndsWith(".bias", StringComparison.Ordinal)),
        "lora_only" => parameterPaths.Where(p => targetPaths.Any(t => p == t + ".base_layer.bias")),
        _ => [],
    };

    public override JsonObject ToPeftJson(bool asPlainDelta = true)
    {
        // PEFT's conversion of PiSSA/OLoRA to a plain LoRA on the original weights doubles the rank (see
        // LoraLinearAdapter.TensorsForFile) and scales alpha so that s stays the same.
        bool convert = asPlainDelta && InitLoraWeights.ChangesBaseWeights;
        double alphaFactor = UseRslora ? Math.Sqrt(2) : 2;
        var json = new JsonObject();
        PeftJson.WriteCommon(json, this);
        json["r"] = convert ? 2 * R : R;
        json["lora_alpha"] = convert ? LoraAlpha * alphaFactor : LoraAlpha;
        json["lora_dropout"] = LoraDropout;
        json["fan_in_fan_out"] = false;
        json["bias"] = Bias;
        json["use_rslora"] = UseRslora;
        json["use_dora"] = UseDora;
        json["init_lora_weights"] = convert ? true : InitLoraWeights.ToJson();
        json["rank_pattern"] = Map(RankPattern, v => convert ? 2 * v : v);
        json["alpha_pattern"] = Map(AlphaPattern, v => convert ? v * alphaFactor : v);
        json["lora_bias"] = LoraBias;
        // Fields PEFT 0.20 writes for features this library does not use, at PEFT's defaults.
        foreach (var field in new[] { "megatron_config", "eva_config", "corda_config", "lora_ga_config", "velora_config", "alora_invocation_tokens",
                                      "monteclora_config", "layer_replication", "target_parameters", "trainable_token_indices", "use_bdlora", "arrow_config" })
            json[field] = null;
        json["megatron_core"] = "megatron.core";
        json["loftq_config"] = new JsonObject();
        json["use_qalora"] = false;
        json["qalora_group_size"] = 16;
        json["ensure_weight_tying"] = false;
        return json;
    }

    static JsonObject Map<T>(IReadOnlyDictionary<string, T>? map, Func<T, T> transform)
    {
        var json = new JsonObject();
        if (map is not null)
            foreach (var (k, v) in map) json[k] = JsonValue.Create(transform(v));
        return json;
    }

    /// <summary>Reads PEFT's LoRA <c>adapter_config.json</c> object. Unknown fields are ignored; fields asking for a
    /// feature this library does not have are an error naming them.</summary>
    public static LoraConfig FromPeftJson(JsonObject json, string file)
    {
        var unsupported = new List<string>();
        void Unsupported(string field, bool condition) { if (condition) unsupported.Add($"{field}={json[field]?.ToJsonString()}"); }
        Unsupported("fan_in_fan_out", PeftJson.GetOr(json, "fan_in_fan_out", false, file));
        Unsupported("use_qalora", PeftJson.GetOr(json, "use_qalora", false, file));
        foreach (var field in new[] { "layer_replication", "megatron_config", "alora_invocation_tokens", "trainable_token_indices", "arrow_config", "monteclora_config" })
            Unsupported(field, json[field] is not null);
        Unsupported("target_parameters", json["target_parameters"] is JsonArray { Count: > 0 });
        Unsupported("use_bdlora", json["use_bdlora"] is JsonValue v && !(v.TryGetValue<bool>(out var b) && !b));
        if (unsupported.Count > 0)
            throw new AdapterConfigException($"{file}: this LoRA adapter uses features PeftSharp does not support: {string.Join(", ", unsupported)}.");

        var init = json["init_lora_weights"] switch
        {
            null => LoraInit.Default,
            JsonValue value when value.TryGetValue<bool>(out var flag) => flag ? LoraInit.Default : LoraInit.Random,
            JsonValue value when value.TryGetValue<string>(out var name) => LoraInit.Parse(name),
            var other => throw new AdapterConfigException($"{file}: init_lora_weights should be true, false or a name such as \"pissa\", not {other.ToJsonString()}."),
        };
        var config = new LoraConfig
        {
            R = PeftJson.GetOr(json, "r", 8, file),
            LoraAlpha = PeftJson.GetOr(json, "lora_alpha", 8.0, file),
            LoraDropout = PeftJson.GetOr(json, "lora_dropout", 0.0, file),
            UseRslora = PeftJson.GetOr(json, "use_rslora", false, file),
            UseDora = PeftJson.GetOr(json, "use_dora", false, file),
            Bias = PeftJson.GetOr(json, "bias", "none", file),
            LoraBias = PeftJson.GetOr(json, "lora_bias", false, file),
            InitLoraWeights = init,
            RankPattern = PeftJson.GetMap<int>(json, "rank_pattern", file),
            AlphaPattern = PeftJson.GetMap<double>(json, "alpha_pattern", file),
        };
        return PeftJson.ReadCommon(config, json, file);
    }
}

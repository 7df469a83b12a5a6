using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Methods.Decomposition;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>How LoRA's A and B start (PEFT <c>init_lora_weights</c>).</summary>
[JsonConverter(typeof(LoraInitJsonConverter))]
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

    /// <summary>PEFT <c>"corda"</c> (Yang et al. 2024, <see cref="CordaInit"/>): A, B from the SVD of W times the
    /// covariance of the layer's inputs (a calibration pass); W keeps the residual.</summary>
    public static LoraInit Corda { get; } = new("corda");

    /// <summary>True for the initialisations that rewrite the base weight as a residual (PiSSA, OLoRA, CorDA).</summary>
    public bool ChangesBaseWeights => Name.StartsWith("pissa", StringComparison.Ordinal) || Name == "olora" || Name == "corda";

    /// <summary>The subspace iterations of a <c>pissa_niter_N</c> init, else null.</summary>
    public int? PissaIterations => Name.StartsWith("pissa_niter_", StringComparison.Ordinal) && int.TryParse(Name["pissa_niter_".Length..], out var n) ? n : null;

    /// <summary>Whether this library can run the initialisation (others, e.g. "loftq" or "eva", can still be loaded).</summary>
    public bool IsSupported => this == Default || this == Gaussian || this == Random || this == Pissa || this == Olora || this == Corda || PissaIterations is not null;

    public static readonly IReadOnlyList<string> SupportedNames = ["true", "false", "gaussian", "pissa", "pissa_niter_N", "olora", "corda"];

    public static LoraInit Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "true" or "default" => Default,
        "false" or "random" => Random,
        var other => new LoraInit(other),
    };

    public JsonNode ToJson() => Name switch { "true" => true, "false" => false, _ => Name };

    public override string ToString() => Name;
}

/// <summary>PEFT's <c>init_lora_weights</c>: <c>true</c>, <c>false</c> or a name such as <c>"pissa"</c>.</summary>
public sealed class LoraInitJsonConverter : JsonConverter<LoraInit>
{
    public override LoraInit Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.True => LoraInit.Default,
        JsonTokenType.False => LoraInit.Random,
        JsonTokenType.String when reader.GetString() is { Length: > 0 } name => LoraInit.Parse(name),
        _ => throw new JsonException("true, false or a name such as \"pissa\""),
    };

    public override void Write(Utf8JsonWriter writer, LoraInit value, JsonSerializerOptions options) => value.ToJson().WriteTo(writer);
}

/// <summary>
/// LoRA (Hu et al. 2021): y = W x + s·B A x with A ∈ R^{r×in}, B ∈ R^{out×r}, s = alpha / r (rsLoRA: alpha / √r),
/// plus DoRA (Liu et al. 2024, <see cref="UseDora"/>) and the PiSSA / OLoRA initialisations. Field names and
/// defaults follow Hugging Face PEFT's <c>LoraConfig</c>, and so does the file it writes.
/// </summary>
public sealed record LoraConfig : AdapterConfig
{
    /// <summary>PEFT <c>r</c>: the rank of the update.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of B A", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary>PEFT <c>lora_alpha</c>: the scale numerator.</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: scale s = alpha / r")]
    public double LoraAlpha { get; init; } = 8;

    /// <summary>PEFT <c>lora_dropout</c>: dropout on the adapter's input during training.</summary>
    [JsonPropertyName("lora_dropout"), Option("dropout", "lora_dropout on the adapter input", Min = 0, Max = 1, MaxExclusive = true)]
    public double LoraDropout { get; init; }

    /// <summary>PEFT <c>use_rslora</c>: scale by alpha / √r (Kalajdzievski 2023), which keeps learning stable as r grows.</summary>
    [JsonPropertyName("use_rslora"), Option("rslora", "use_rslora: s = alpha / sqrt(r)")]
    public bool UseRslora { get; init; }

    /// <summary>PEFT <c>use_dora</c>: weight-decomposed LoRA, W' = m · (W + s B A) / ‖W + s B A‖ (row norms).</summary>
    [JsonPropertyName("use_dora")]
    public bool UseDora { get; init; }

    /// <summary>PEFT <c>init_lora_weights</c>.</summary>
    [JsonPropertyName("init_lora_weights"), Option("init", "init_lora_weights: true | false | gaussian | pissa | pissa_niter_N | olora | corda")]
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;

    /// <summary>PEFT <c>corda_config</c>: CorDA's settings (with <c>init_lora_weights="corda"</c>; null there means
    /// PEFT's defaults, IPM).</summary>
    [JsonPropertyName("corda_config")]
    public CordaConfig? CordaConfig { get; init; }

    /// <summary>CorDA's settings in force: <see cref="CordaConfig"/> or PEFT's default.</summary>
    public CordaConfig CordaSettings => CordaConfig ?? new CordaConfig();

    /// <summary>CorDA decomposes W with the covariance of each target's inputs: it needs calibration batches.</summary>
    public override bool NeedsCalibration => InitLoraWeights == LoraInit.Corda;

    /// <summary>PEFT <c>bias</c>: "none", "all" (every bias of the model trains and is saved) or "lora_only"
    /// (the biases of the adapted layers).</summary>
    [JsonPropertyName("bias"), Option("bias", "none | all | lora_only: which biases train")]
    public string Bias { get; init; } = "none";

    /// <summary>PEFT <c>lora_bias</c>: give B a bias (zero at init).</summary>
    [JsonPropertyName("lora_bias")]
    public bool LoraBias { get; init; }

    /// <summary>PEFT <c>rank_pattern</c>: per-module ranks, keyed by module name or regex.</summary>
    [JsonPropertyName("rank_pattern")]
    public IReadOnlyDictionary<string, int>? RankPattern { get; init; }

    /// <summary>PEFT <c>alpha_pattern</c>: per-module alphas, keyed by module name or regex.</summary>
    [JsonPropertyName("alpha_pattern")]
    public IReadOnlyDictionary<string, double>? AlphaPattern { get; init; }

    public override string MethodName => UseDora ? "dora" : "lora";

    public override string PeftType => "LORA";

    public override string Variant => UseDora ? "dora" : InitLoraWeights == LoraInit.Corda ? $"corda-{CordaSettings.CordaMethod}" : RewritesBase ? InitLoraWeights.Name : UseRslora ? "rslora" : "lora";

    public override string SupportedLayerTypes => UseDora || RewritesBase ? "Linear" : "Linear, Embedding";

    public override bool CanHold(Module module) => module is Linear || (module is Embedding && !UseDora && !RewritesBase);

    public override bool Merges => true;

    /// <summary>PiSSA and OLoRA write the residual W − s·B A into the base weight.</summary>
    public override bool RewritesBase => InitLoraWeights.ChangesBaseWeights;

    /// <summary>PEFT's conversion of PiSSA/OLoRA to a plain LoRA on the original weights: rank 2r, [B, B₀] and [A; −A₀]
    /// (see <see cref="LoraLinearAdapter.TensorsForFile"/>), alpha scaled so that s stays the same.</summary>
    public override AdapterConfig PlainEquivalent()
    {
        if (!RewritesBase) return this;
        double alphaFactor = UseRslora ? Math.Sqrt(2) : 2;
        return this with
        {
            R = 2 * R, LoraAlpha = LoraAlpha * alphaFactor, InitLoraWeights = LoraInit.Default,
            RankPattern = RankPattern?.ToDictionary(p => p.Key, p => 2 * p.Value),
            AlphaPattern = AlphaPattern?.ToDictionary(p => p.Key, p => p.Value * alphaFactor),
        };
    }

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
        PatternKey.Validate(RankPattern, "rank_pattern");
        PatternKey.Validate(AlphaPattern, "alpha_pattern");
        if (RankPattern?.FirstOrDefault(p => p.Value is <= 0 or > 65536) is { Key: not null } badRank)
            throw new ArgumentOutOfRangeException(nameof(RankPattern), badRank.Value, $"rank_pattern['{badRank.Key}'] must be a rank in [1, 65536].");
        if (AlphaPattern?.FirstOrDefault(p => !double.IsFinite(p.Value) || p.Value == 0) is { Key: not null } badAlpha)
            throw new ArgumentOutOfRangeException(nameof(AlphaPattern), badAlpha.Value, $"alpha_pattern['{badAlpha.Key}'] must be a finite, non-zero number.");
        if (LoraAlpha == 0) throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha, "lora_alpha must be a non-zero number (commonly r or 2r).");
        if (RewritesBase && (LoraAlpha < 0 || AlphaPattern?.Values.Any(a => a < 0) == true))
            throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha,
                $"init_lora_weights '{InitLoraWeights.Name}' splits W into B A / √s and a residual, which needs a positive lora_alpha (s = alpha / r > 0).");
        if (Bias is not ("none" or "all" or "lora_only")) throw new ArgumentOutOfRangeException(nameof(Bias), Bias, "bias must be \"none\", \"all\" or \"lora_only\".");
        if (UseDora && LoraBias) throw new ArgumentException("use_dora and lora_bias cannot be combined (as in PEFT): choose one.", nameof(LoraBias));
        if (CordaConfig is { } corda)
        {
            if (corda.CordaMethod is not ("ipm" or "kpm"))
                throw new ArgumentOutOfRangeException(nameof(CordaConfig), corda.CordaMethod, "corda_config.corda_method must be \"ipm\" (adapt the largest components) or \"kpm\" (adapt the smallest, preserve knowledge).");
            if (corda.CacheFile is not null || corda.CovarianceFile is not null)
                throw new ArgumentException("corda_config.cache_file / covariance_file are PEFT's caches and are not read here: pass calibration batches to AddAdapter instead, and leave both null.", nameof(CordaConfig));
        }
        if (UseDora && RewritesBase)
            throw new ArgumentException($"use_dora with init_lora_weights '{InitLoraWeights.Name}' is not supported here: use DoRA with the default init, or PiSSA/OLoRA without DoRA.", nameof(UseDora));
    }

    /// <summary>Checks that the initialisation can run here (files with other inits can still be loaded).</summary>
    public void ValidateInit()
    {
        if (!InitLoraWeights.IsSupported)
            throw new ArgumentOutOfRangeException(nameof(InitLoraWeights), InitLoraWeights.Name,
                $"init_lora_weights '{InitLoraWeights.Name}' is not available here; choose one of {string.Join(", ", LoraInit.SupportedNames)}.");
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var (path, baseLayer, initialize) = (context.Path, context.BaseLayer, context.Initialize);
        if (initialize) ValidateInit();
        int r = RankAt(path);
        var weight = AdapterModule.BaseWeight(baseLayer);
        long fanOut = weight.shape[0], fanIn = weight.shape[1];
        // PEFT accepts a rank above min(out, in) (it adds parameters, not expressiveness; the summary says so), but a
        // decomposition of W cannot give more than min(out, in) components.
        if (RewritesBase && r > Math.Min(fanOut, fanIn))
            throw new ArgumentOutOfRangeException(nameof(R), r,
                $"rank {r} does not fit '{path}' ({baseLayer.GetType().Name} {fanOut}x{fanIn}): init_lora_weights '{InitLoraWeights.Name}' takes r components of W, which has at most {Math.Min(fanOut, fanIn)}.");
        double scaling = ScalingAt(path);
        Func<Tensor, (Tensor, Tensor, Tensor)>? corda = null;
        if (initialize && InitLoraWeights == LoraInit.Corda)
        {
            var covariance = context.Calibration?.Covariance ?? throw new ArgumentException(
                $"init_lora_weights \"corda\" at '{path}' needs the covariance of the layer's inputs: pass calibration batches to AddAdapter. " +
                "A CorDA file saved without PEFT's conversion (asPlainDelta: false) holds A and B for a residual base and can only be loaded after the same calibration; " +
                "save with the conversion (the default) to get a plain LoRA file that loads anywhere.", nameof(context));
            string method = CordaSettings.CordaMethod;
            corda = w => CordaInit.Factors(w, covariance, r, scaling, method);
        }
        return baseLayer switch
        {
            TorchSharp.Modules.Embedding => new LoraEmbeddingAdapter(r, scaling, weight, initialize ? InitLoraWeights : null),
            _ when UseDora => new DoraLinearAdapter(r, scaling, LoraDropout, LoraBias, weight, initialize ? InitLoraWeights : null),
            _ => new LoraLinearAdapter(r, scaling, LoraDropout, LoraBias, weight, initialize ? InitLoraWeights : null, corda),
        };
    }

    public override IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => Bias switch
    {
        "all" => parameterPaths.Where(p => p == "bias" || p.EndsWith(".bias", StringComparison.Ordinal)),
        "lora_only" => parameterPaths.Where(p => targetPaths.Any(t => p == t + ".base_layer.bias")),
        _ => [],
    };

    // Fields PEFT 0.20 writes for features this library does not use, at PEFT's defaults.
    static readonly string[] UnusedNullFields =
        ["megatron_config", "eva_config", "lora_ga_config", "velora_config", "alora_invocation_tokens",
         "monteclora_config", "layer_replication", "target_parameters", "trainable_token_indices", "use_bdlora", "arrow_config"];

    protected internal override void WriteFixedFields(JsonObject json)
    {
        json["rank_pattern"] ??= new JsonObject();
        json["alpha_pattern"] ??= new JsonObject();
        WriteUnusedLoraFields(json);
    }

    /// <summary>The fields PEFT's <c>LoraConfig</c> (and so <c>AdaLoraConfig</c>) writes for features this library does
    /// not use, at PEFT's defaults.</summary>
    internal static void WriteUnusedLoraFields(JsonObject json)
    {
        json["fan_in_fan_out"] = false;
        foreach (var field in UnusedNullFields) json[field] = null;
        if (!json.ContainsKey("corda_config")) json["corda_config"] = null;   // LoRA's own when CorDA is the init
        json["megatron_core"] = "megatron.core";
        json["loftq_config"] = new JsonObject();
        json["use_qalora"] = false;
        json["qalora_group_size"] = 16;
        json["ensure_weight_tying"] = false;
    }

    /// <summary>Refuses files that ask for a LoRA feature this library does not have, naming them.</summary>
    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file)
    {
        var unsupported = UnsupportedLoraFeatures(json);
        if (unsupported.Count > 0)
            throw new AdapterConfigException($"{file}: this LoRA adapter uses features PeftSharp does not support: {string.Join(", ", unsupported)}.");
        return this;
    }

    /// <summary>The LoRA features a file asks for that this library does not have, as "field=value".</summary>
    internal static List<string> UnsupportedLoraFeatures(JsonObject json)
    {
        var unsupported = new List<string>();
        void Unsupported(string field, bool condition) { if (condition) unsupported.Add($"{field}={json[field]?.ToJsonString()}"); }
        Unsupported("fan_in_fan_out", json["fan_in_fan_out"] is JsonValue f && f.TryGetValue<bool>(out var fan) && fan);
        Unsupported("use_qalora", json["use_qalora"] is JsonValue q && q.TryGetValue<bool>(out var qa) && qa);
        foreach (var field in new[] { "layer_replication", "megatron_config", "alora_invocation_tokens", "trainable_token_indices", "arrow_config", "monteclora_config" })
            Unsupported(field, json[field] is not null);
        Unsupported("target_parameters", json["target_parameters"] is JsonArray { Count: > 0 });
        Unsupported("use_bdlora", json["use_bdlora"] is JsonValue v && !(v.TryGetValue<bool>(out var b) && !b));
        return unsupported;
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".lora_"];

    /// <summary>A and B must be there and share a rank, which must be the config's (r / rank_pattern); DoRA needs its
    /// magnitude vector.</summary>
    public override int? InspectModule(string path, IReadOnlyList<PeftSharp.IO.SafeTensorInfo> tensors, List<string> problems)
    {
        int? rank = null;
        var a = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_A.weight") || t.Name.EndsWith(".lora_embedding_A"));
        var b = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_B.weight") || t.Name.EndsWith(".lora_embedding_B"));
        if (a is null || b is null) problems.Add($"'{path}' has {(a is null ? "no lora_A" : "no lora_B")}.");
        else if (a.Shape.Length != 2 || b.Shape.Length != 2)
            problems.Add($"'{path}': lora_A [{string.Join(", ", a.Shape)}] and lora_B [{string.Join(", ", b.Shape)}] should both be matrices.");
        else
        {
            bool embedding = a.Name.EndsWith(".lora_embedding_A");
            rank = (int)a.Shape[0];
            if (b.Shape[1] != rank)   // lora_B is (out, r); lora_embedding_B is (dim, r)
                problems.Add($"'{path}': lora_A [{string.Join(", ", a.Shape)}] and lora_B [{string.Join(", ", b.Shape)}] do not share a rank.");
            if (rank != RankAt(path))
                problems.Add($"'{path}' has rank {rank} but adapter_config.json says {RankAt(path)} (r / rank_pattern).");
            if (UseDora && !embedding && !tensors.Any(t => t.Name.EndsWith(".lora_magnitude_vector")))
                problems.Add($"'{path}' has no lora_magnitude_vector although use_dora is true.");
        }
        if (TargetModules is { } targets && !targets.IsAllLinear && !TargetMatcher.IsTarget(targets, path, LayersToTransform, LayersPattern))
            problems.Add($"'{path}' is not matched by target_modules {targets}.");
        return rank;
    }

    /// <summary>Given a rank but no alpha, alpha follows the rank (s = 1), as the notebooks and the Lab have always done.</summary>
    protected internal override AdapterConfig AfterBinding(IReadOnlyDictionary<string, string> options) =>
        options.ContainsKey("rank") && !options.ContainsKey("alpha") ? this with { LoraAlpha = R } : this;

    protected internal override string? DefaultText(string option) => option == "alpha" ? "rank" : null;

    protected internal override IReadOnlyList<string> Choices(string option) => option switch
    {
        "init" => LoraInit.SupportedNames,
        "bias" => ["none", "all", "lora_only"],
        _ => [],
    };

    protected internal override object? ParseOption(Type type, string text) => type == typeof(LoraInit) ? LoraInit.Parse(text) : null;
}

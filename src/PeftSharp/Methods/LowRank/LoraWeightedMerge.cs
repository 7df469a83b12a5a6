using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// Hugging Face PEFT's <c>LoraModel.add_weighted_adapter</c> (0.20): a new LoRA adapter made from existing ones, with
/// PEFT's combination types, checks, config and file layout, so the result saves as PEFT saves it.
/// </summary>
/// <remarks>
/// Per adapted layer, with adapters k = 1..K of factors Aₖ [r, in], Bₖ [out, r] (embeddings: [r, vocab], [dim, r]),
/// scales sₖ and user weights wₖ (negative ones subtract):
/// <list type="bullet">
/// <item><c>linear</c>, <c>ties</c>, <c>dare_linear</c>, <c>dare_ties</c>, <c>magnitude_prune</c>: A and B are combined
/// separately by <see cref="TaskMerging"/> with weights sign(wₖsₖ)·√|wₖsₖ| for A and √|wₖsₖ| for B (all ranks equal).</item>
/// <item><c>cat</c>: A = [w₁s₁A₁; …; w_Ks_KA_K], B = [B₁ … B_K], rank Σ rₖ: exactly Σ wₖ sₖ Bₖ Aₖ.</item>
/// <item><c>svd</c>, <c>ties_svd</c>, <c>dare_linear_svd</c>, <c>dare_ties_svd</c>, <c>magnitude_prune_svd</c>: the full
/// deltas ΔWₖ = sₖ Bₖ Aₖ are combined with weights wₖsₖ (PEFT scales by sₖ twice here; with alpha = r it is 1), then
/// truncated to rank <c>svd_rank</c> (default: the largest rank) by SVD: B = U_r diag(S_r), A = V_rᵀ, both clamped to
/// ±h when given, with h the <c>svd_clamp</c> quantile of the signed entries of B and A together, as PEFT takes it
/// (not of their magnitudes).</item>
/// </list>
/// The new config is the first adapter's with r = lora_alpha = the new rank (so s = 1; with use_rslora kept from the
/// first adapter PEFT's s is √r instead, and so it is here), no rank/alpha patterns, and target_modules the union of the
/// adapters' (names: the sorted set union; regexes: "(p₁)|(p₂)|…").
/// Differences from PEFT, all where PEFT would fail or write a file it cannot load: a name already in use, a missing
/// density, a weight count that differs from the adapter count are errors here (PEFT returns, crashes, or truncates);
/// where a layer's result has fewer components than the new rank (a rank_pattern below r, an SVD rank above
/// min(out, in)) it is padded with zero rows/columns, which changes nothing in B A but keeps the file's shapes those of
/// its config. <c>svd_full_matrices</c> and <c>svd_driver</c> are not offered: they change speed, not the result.
/// </remarks>
public static class LoraWeightedMerge
{
    /// <summary>The combination types of PEFT's <c>add_weighted_adapter</c>.</summary>
    public static readonly IReadOnlyList<string> CombinationTypes =
        ["svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"];

    static readonly string[] FactorTypes = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"];

    /// <summary>
    /// Adds adapter <paramref name="adapterName"/>, the combination of the LoRA adapters <paramref name="adapters"/> with
    /// <paramref name="weights"/> (one each, negative to subtract) by <paramref name="combinationType"/> (see
    /// <see cref="CombinationTypes"/> and the class remarks). Like PEFT it is not activated. <paramref name="density"/>
    /// (fraction kept, in [0, 1]) is required by the ties / dare / magnitude_prune types; <paramref name="majoritySignMethod"/>
    /// ("total" or "frequency") is used by the ties types; <paramref name="seed"/> makes DARE's random masks repeatable
    /// (null: torch's global generator, as PEFT). Returns the new adapter's config.
    /// </summary>
    public static LoraConfig AddWeightedAdapter(this PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string adapterName,
                                                string combinationType = "svd", int? svdRank = null, double? svdClamp = null, double? density = null,
                                                string majoritySignMethod = "total", long? seed = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(weights);
        var (type, config) = Plan(peft, adapters, weights, adapterName, combinationType, svdRank, svdClamp, density, majoritySignMethod);

        // The new adapter is created outside any dispose scope of ours (its parameters must outlive it).
        var computed = Compute(peft, adapters, weights, type, config, density, majoritySignMethod, svdClamp, seed);
        var tensors = new Dictionary<string, Tensor>(computed);
        var firstTensors = peft.AdapterTensors(adapters[0]);
        try
        {
            // modules_to_save: a fresh copy of the original module, as PEFT's ModulesToSaveWrapper.update makes one.
            foreach (var wrapper in peft.SavedModules.Where(w => config.ModulesToSave?.Any(n => w.Path == n || w.Path.EndsWith("." + n, StringComparison.Ordinal)) == true))
                foreach (var (name, parameter) in wrapper.OriginalModule.named_parameters())
                    tensors[AdapterFiles.KeyPrefix + wrapper.Path + "." + name] = parameter;
            // Base parameters the config trains (bias "all" / "lora_only") are shared by every adapter: taken as they are.
            foreach (var (key, value) in firstTensors)
                if (!key.Contains(".lora_", StringComparison.Ordinal) && !tensors.ContainsKey(key) && !peft.SavedModules.Any(w => key.StartsWith(AdapterFiles.KeyPrefix + w.Path + ".", StringComparison.Ordinal)))
                    tensors[key] = value;
            peft.AddAdapter(adapterName, config, tensors);
        }
        finally
        {
            foreach (var t in firstTensors.Values.Concat(computed.Values)) t.Dispose();
        }
        return config;
    }

    /// <summary>The new adapter's lora_A / lora_B (or lora_embedding_A / _B) at every layer its config targets, by file key.</summary>
    static Dictionary<string, Tensor> Compute(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string type, LoraConfig config,
                                              double? density, string majoritySignMethod, double? svdClamp, long? seed)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var tensors = new Dictionary<string, Tensor>();
        var layers = peft.Layers.ToDictionary(l => l.Path);
        Generator? generator = null;
        try
        {
            foreach (var path in PeftModel.PreviewTargets(peft.Model, config).Matched)
            {
                var present = layers.TryGetValue(path, out var layer)
                    ? adapters.Select((name, i) => (Factors: FactorsOf(layer, name), Weight: weights[i])).Where(p => p.Factors is not null).ToList()
                    : [];
                if (present.Count == 0)
                    throw new ArgumentException($"The merged adapter's target_modules ({config.TargetModules}) take '{path}', where none of {string.Join(", ", adapters.Select(a => $"'{a}'"))} is: the adapters' exclude_modules or layers_to_transform differ. Merge adapters that cover the same layers.");
                var first = present[0].Factors!;
                if (generator is null && seed is long s) generator = new Generator((ulong)s, first.A.device);
                var (a, b) = type switch
                {
                    "cat" => Concatenate(present!),
                    _ when FactorTypes.Contains(type) => CombineFactors(path, type, present!, density, majoritySignMethod, generator),
                    _ => SvdOfCombinedDelta(type, present!, config.R, density, majoritySignMethod, svdClamp, generator),
                };
                a = PadRows(a, config.R).to(first.A.dtype);                   // (R, in)
                b = PadRows(b.t(), config.R).t().to(first.B.dtype);           // (out, R)
                var (keyA, keyB) = first.Embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight");
                tensors[AdapterFiles.KeyPrefix + path + "." + keyA] = a.contiguous();
                tensors[AdapterFiles.KeyPrefix + path + "." + keyB] = b.contiguous();
            }
        }
        finally
        {
            generator?.Dispose();
        }
        foreach (var t in tensors.Values) t.MoveToOuterDisposeScope();
        return tensors;
    }

    /// <summary>An adapter's factors at one layer: A [r, in] (embedding [r, vocab]), B [out, r] ([dim, r]), its scale.</summary>
    sealed record Factors(Tensor A, Tensor B, double Scaling, bool Embedding);

    static Factors? FactorsOf(AdapterLayer layer, string name) => !layer.Contains(name) ? null : layer[name] switch
    {
        LoraLinearAdapter lora => new Factors(lora.A, lora.B, lora.Scaling, false),
        LoraEmbeddingAdapter embedding => new Factors(embedding.A, embedding.B, embedding.Scaling, true),
        var other => throw new ArgumentException($"'{name}' at '{layer.Path}' is a {other.MethodName} adapter; add_weighted_adapter combines LoRA adapters."),
    };

    /// <summary>PEFT's <c>_check_add_weighted_adapter</c> and argument checks; the combination type actually used (one
    /// adapter is always "linear", as in PEFT) and the new adapter's config.</summary>
    static (string Type, LoraConfig Config) Plan(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string adapterName,
                                                 string combinationType, int? svdRank, double? svdClamp, double? density, string majoritySignMethod)
    {
        if (adapters.Count == 0) throw new ArgumentException("Name at least one adapter to merge.", nameof(adapters));
        if (weights.Count != adapters.Count)
            throw new ArgumentException($"Give one weight per adapter: {adapters.Count} adapter(s) but {weights.Count} weight(s).", nameof(weights));
        if (weights.FirstOrDefault(w => !double.IsFinite(w)) is var bad && !double.IsFinite(bad))
            throw new ArgumentOutOfRangeException(nameof(weights), bad, "Weights must be finite numbers (negative ones subtract an adapter).");
        if (!CombinationTypes.Contains(combinationType))
            throw new ArgumentException($"Invalid combination_type '{combinationType}'; choose one of {string.Join(", ", CombinationTypes)}.", nameof(combinationType));
        if (peft.AdapterNames.Contains(adapterName))
            throw new ArgumentException($"An adapter named '{adapterName}' already exists; choose another name for the merged adapter (PEFT would silently keep the old one).", nameof(adapterName));

        var configs = new List<LoraConfig>();
        foreach (var name in adapters)
        {
            if (!peft.AdapterNames.Contains(name))
                throw new ArgumentException($"Adapter '{name}' does not exist. Adapters: {(peft.AdapterNames.Count == 0 ? "none" : string.Join(", ", peft.AdapterNames))}.", nameof(adapters));
            var config = peft.Config(name) as LoraConfig
                ?? throw new ArgumentException($"Adapter '{name}' is {peft.Config(name).MethodName}; add_weighted_adapter combines LoRA adapters.", nameof(adapters));
            if (config.UseDora) throw new ArgumentException($"Adapter '{name}' uses DoRA, whose magnitude vector a weighted merge of A and B does not combine; merge plain LoRA adapters.", nameof(adapters));
            if (config.LoraBias) throw new ArgumentException($"Adapter '{name}' has lora_bias, which add_weighted_adapter does not combine; merge adapters without lora_bias.", nameof(adapters));
            if (config.RewritesBase)
                throw new ArgumentException($"Adapter '{name}' (init_lora_weights '{config.InitLoraWeights.Name}') works on a rewritten base weight; save it (as the plain LoRA PEFT converts it to) and load it back before merging.", nameof(adapters));
            configs.Add(config);
        }

        var wrappers = peft.SavedModules.Where(w => adapters.Distinct().Count(w.Contains) > 1).ToList();
        if (wrappers.Count > 0)
            throw new ArgumentException($"Cannot add weighted adapters if they target the same module with modules_to_save, but found {wrappers.Count} such instance(s) ({string.Join(", ", wrappers.Select(w => $"'{w.Path}'"))}).", nameof(adapters));

        string type = adapters.Count == 1 ? "linear" : combinationType;
        bool prunes = type.Contains("ties") || type.StartsWith("dare") || type.StartsWith("magnitude_prune");
        if (prunes && density is null)
            throw new ArgumentException($"combination_type '{type}' prunes: give density, the fraction of values kept, in [0, 1].", nameof(density));
        if (density is double d && (d is < 0 or > 1 || double.IsNaN(d)))
            throw new ArgumentOutOfRangeException(nameof(density), d, "density is the fraction of values kept: a number in [0, 1].");
        if (type.StartsWith("dare") && density == 0)
            throw new ArgumentOutOfRangeException(nameof(density), 0.0, "DARE with density 0 drops every value and then divides by 0: use a density above 0.");
        if (majoritySignMethod is not ("total" or "frequency"))
            throw new ArgumentException($"majority_sign_method '{majoritySignMethod}' is not one of \"total\", \"frequency\".", nameof(majoritySignMethod));
        if (svdRank is <= 0) throw new ArgumentOutOfRangeException(nameof(svdRank), svdRank, "svd_rank is the rank of the merged adapter: 1 or more (or null for the largest rank of the adapters).");
        if (svdClamp is double c && (c is < 0 or > 1 || double.IsNaN(c)))
            throw new ArgumentOutOfRangeException(nameof(svdClamp), c, "svd_clamp is a quantile in [0, 1] (e.g. 0.99), or null for no clamping.");

        // When allocating the new adapter the largest possible rank of each is needed (rank_pattern included).
        var ranks = configs.Select(c => c.RankPattern is { Count: > 0 } pattern ? Math.Max(c.R, pattern.Values.Max()) : c.R).ToList();
        int newRank;
        if (FactorTypes.Contains(type))
        {
            if (ranks.Distinct().Count() != 1)
                throw new ArgumentException($"All adapters must have the same r value when using combination_type {type} (they have {string.Join(", ", adapters.Select((a, i) => $"'{a}' {ranks[i]}"))}); use cat or an svd type to merge different ranks.", nameof(adapters));
            newRank = ranks[0];
        }
        else if (type == "cat") newRank = ranks.Sum();
        else newRank = svdRank ?? ranks.Max();

        var targetSets = configs.Select(c => c.TargetModules!).ToList();
        TargetModules newTargets;
        if (targetSets.All(t => t.IsAllLinear)) newTargets = TargetModules.AllLinear;
        else if (targetSets.Any(t => t.IsAllLinear))
            throw new ArgumentException("Combining adapters with target_modules \"all-linear\" and others is not supported; give them the same kind of target_modules.", nameof(adapters));
        else if (targetSets.All(t => t.Pattern is not null)) newTargets = TargetModules.Regex(string.Join("|", targetSets.Select(t => $"({t.Pattern})")));
        else if (targetSets.All(t => t.Names is not null)) newTargets = TargetModules.List(targetSets.SelectMany(t => t.Names!).Distinct().Order(StringComparer.Ordinal));
        else throw new ArgumentException("all adapter configs should follow the same target modules type. Combining adapters with `target_modules` type being a mix of list/set and string is not supported.", nameof(adapters));

        var newConfig = configs[0] with { R = newRank, LoraAlpha = newRank, TargetModules = newTargets, RankPattern = null, AlphaPattern = null };
        return (type, newConfig);
    }

    // cat: A = [w₁s₁A₁; ...], B = [B₁ ... ], so B A = Σ wₖ sₖ Bₖ Aₖ.
    static (Tensor A, Tensor B) Concatenate(IReadOnlyList<(Factors Factors, double Weight)> present) =>
        (cat(present.Select(p => p.Factors.A.mul(p.Weight).mul(p.Factors.Scaling)).ToList(), 0),   // (Σr, in)
         cat(present.Select(p => p.Factors.B).ToList(), 1));                                         // (out, Σr)

    // linear / ties / dare / magnitude_prune on A and B separately, the sign of wₖsₖ on A only.
    static (Tensor A, Tensor B) CombineFactors(string path, string type, IReadOnlyList<(Factors Factors, double Weight)> present, double? density, string signMethod, Generator? generator)
    {
        var layerRanks = present.Select(p => p.Factors.A.shape[0]).Distinct().ToList();
        if (layerRanks.Count != 1)
            throw new ArgumentException($"At '{path}' the adapters have ranks {string.Join(", ", layerRanks)} (rank_pattern); combination_type {type} needs equal ranks there. Use cat or an svd type.");
        var device = present[0].Factors.A.device;
        var scaled = present.Select(p => p.Weight * p.Factors.Scaling).ToList();
        // PEFT builds these with torch.tensor(list of floats): float32.
        var weightsA = tensor(scaled.Select(w => (float)(Math.Sqrt(Math.Abs(w)) * (w >= 0 ? 1 : -1))).ToArray(), device: device);
        var weightsB = tensor(scaled.Select(w => (float)Math.Sqrt(Math.Abs(w))).ToArray(), device: device);
        return (Combine(type, present.Select(p => p.Factors.A).ToList(), weightsA, density, signMethod, generator),
                Combine(type, present.Select(p => p.Factors.B).ToList(), weightsB, density, signMethod, generator));
    }

    // svd types: combine the full deltas, then the best rank-r factorisation.
    static (Tensor A, Tensor B) SvdOfCombinedDelta(string type, IReadOnlyList<(Factors Factors, double Weight)> present, int newRank, double? density,
                                                   string signMethod, double? clamp, Generator? generator)
    {
        bool embedding = present.Any(p => p.Factors.Embedding);
        // get_delta_weight: s B A (out, in); for an embedding PEFT's is (s B A)ᵀ (vocab, dim), transposed back below.
        var deltas = present.Select(p => p.Factors.B.matmul(p.Factors.A).mul(p.Factors.Scaling)).Select(d => embedding ? d.t() : d).ToList();
        var weights = tensor(present.Select(p => (float)(p.Weight * p.Factors.Scaling)).ToArray(), device: deltas[0].device);
        var delta = Combine(type == "svd" ? "linear" : type[..^"_svd".Length], deltas, weights, density, signMethod, generator);
        if (embedding) delta = delta.t();
        var (u, s, vh) = linalg.svd(delta, fullMatrices: false);       // (out, k), (k), (k, in)
        long k = Math.Min(newRank, s.shape[0]);
        var b = u[.., ..(int)k].matmul(diag(s[..(int)k]));               // (out, k)
        var a = vh[..(int)k, ..];                                        // (k, in)
        if (clamp is double q)
        {
            var entries = cat([b.flatten(), a.flatten()], 0);
            var high = entries.quantile(tensor(q, dtype: entries.dtype, device: entries.device)).to(ScalarType.Float64).item<double>();
            b = b.clamp(-high, high);
            a = a.clamp(-high, high);
        }
        return (a, b);
    }

    static Tensor Combine(string type, IReadOnlyList<Tensor> tasks, Tensor weights, double? density, string signMethod, Generator? generator) => type switch
    {
        "linear" => TaskMerging.TaskArithmetic(tasks, weights),
        "ties" => TaskMerging.Ties(tasks, weights, density!.Value, signMethod),
        "dare_linear" => TaskMerging.DareLinear(tasks, weights, density!.Value, generator),
        "dare_ties" => TaskMerging.DareTies(tasks, weights, density!.Value, signMethod, generator),
        "magnitude_prune" => TaskMerging.MagnitudePrune(tasks, weights, density!.Value),
        _ => throw new ArgumentException($"Invalid combination type '{type}'."),
    };

    // Zero rows up to `rank` rows (a zero component changes nothing in B A).
    static Tensor PadRows(Tensor t, int rank) =>
        t.shape[0] >= rank ? t : cat([t, zeros(rank - t.shape[0], t.shape[1], dtype: t.dtype, device: t.device)], 0);
}

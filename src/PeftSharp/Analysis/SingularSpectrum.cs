using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Analysis;

/// <summary>What a <see cref="SingularSpectrum"/> was computed from.</summary>
public enum SpectrumSource
{
    /// <summary>The layer's base weight W (with any merged adapters folded in).</summary>
    Weight,

    /// <summary>An adapter's weight change ΔW (for LoRA s·B A), whose rank is at most the adapter rank.</summary>
    Delta,

    /// <summary>The weight the layer acts with: W + ΔW.</summary>
    Adapted,

    /// <summary>The change full fine-tuning made to a layer's weight: W_tuned − W_reference.</summary>
    FullDelta,

    /// <summary>The Van Loan rearrangement R(W) of a weight (<see cref="KroneckerSpectrum"/>): its singular values say how
    /// many Kronecker-product terms W needs.</summary>
    Kronecker,
}

/// <summary>
/// The singular values of one layer's weight or adapter delta, largest first, with the cumulative energy
/// (Σ_{i≤k} σ_i² / Σ σ_i²) and the adapter rank to mark. A matrix of more than two dimensions (a convolution kernel)
/// is read as (out, rest). Shows how much of a matrix a rank-r update can hold and how much rank an adapter uses.
/// </summary>
public sealed record SingularSpectrum(string Layer, SpectrumSource Source, string? AdapterName, IReadOnlyList<long> Shape,
                                      IReadOnlyList<double> Values, int? AdapterRank)
{
    IReadOnlyList<double>? _cumulative;

    /// <summary>Σ σ_i², the squared Frobenius norm.</summary>
    public double TotalEnergy => Values.Sum(v => v * v);

    /// <summary>Entry k-1 is the share of the energy in the top k singular values (1 at the end).</summary>
    public IReadOnlyList<double> CumulativeEnergy => _cumulative ??= Cumulative(Values);

    /// <summary>The smallest k whose top-k singular values hold <paramref name="fraction"/> of the energy.</summary>
    public int RankForEnergy(double fraction)
    {
        if (fraction is <= 0 or > 1) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "An energy fraction is in (0, 1], e.g. 0.9.");
        for (int k = 0; k < CumulativeEnergy.Count; k++)
            if (CumulativeEnergy[k] >= fraction - 1e-12) return k + 1;
        return CumulativeEnergy.Count;
    }

    /// <summary>The number of values before the spectrum's elbow (<see cref="SpectrumMarkers.Elbow"/>).</summary>
    public int Elbow => SpectrumMarkers.Elbow(Values);

    /// <summary>The energy share of the top <see cref="AdapterRank"/> singular values, when a rank is marked.</summary>
    public double? EnergyAtAdapterRank => AdapterRank is int r && r > 0 && CumulativeEnergy.Count > 0 ? CumulativeEnergy[Math.Min(r, CumulativeEnergy.Count) - 1] : null;

    /// <summary>Effective rank (Roy and Vetterli 2007): exp of the entropy of σ_i / Σσ; 0 for a zero matrix.</summary>
    public double EffectiveRank
    {
        get
        {
            double sum = Values.Sum();
            if (sum <= 0) return 0;
            double entropy = -Values.Where(v => v > 0).Sum(v => v / sum * Math.Log(v / sum));
            return Math.Exp(entropy);
        }
    }

    /// <summary>Stable rank Σσ² / σ_1²; 0 for a zero matrix.</summary>
    public double StableRank => Values.Count == 0 || Values[0] <= 0 ? 0 : TotalEnergy / (Values[0] * Values[0]);

    /// <summary>What the spectrum shows, e.g. "delta of adapter 'default' at lin0 [64 x 16]".</summary>
    public string Title => (Source switch
    {
        SpectrumSource.Delta => $"ΔW of adapter '{AdapterName}' at {Layer}",
        SpectrumSource.Adapted => $"W + ΔW ('{AdapterName}') at {Layer}",
        SpectrumSource.Kronecker => $"Kronecker spectrum R(W) at {Layer}",
        SpectrumSource.FullDelta => $"ΔW of full fine-tuning at {Layer}",
        _ => $"W at {Layer}",
    }) + $" [{string.Join(" x ", Shape)}]";

    public override string ToString() =>
        $"{Title}: σ1 {(Values.Count > 0 ? Values[0] : 0):G4}, effective rank {EffectiveRank:0.0}, 90% energy at k={(Values.Count > 0 ? RankForEnergy(0.9) : 0)}" +
        (EnergyAtAdapterRank is double e ? $", {100 * e:0.0}% of the energy in the top r={AdapterRank}" : "");

    /// <summary>The spectrum of <paramref name="matrix"/> (computed in float64 on the CPU; the tensor is not changed).</summary>
    public static SingularSpectrum Of(Tensor matrix, string layer, SpectrumSource source = SpectrumSource.Weight, string? adapterName = null, int? adapterRank = null)
    {
        ArgumentNullException.ThrowIfNull(matrix);
        if (matrix.dim() < 2)
            throw new ArgumentException($"A singular spectrum needs a matrix; '{layer}' gives a tensor of shape [{string.Join(", ", matrix.shape)}].", nameof(matrix));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var m = matrix.detach().to(ScalarType.Float64, CPU).reshape(matrix.shape[0], -1);
        // linalg.svdvals on NaN or Inf fails deep in LAPACK with a native trace; say which layer holds them instead.
        long nan = m.isnan().sum().item<long>(), inf = m.isinf().sum().item<long>();
        if (nan + inf > 0)
            throw new ArgumentException(
                $"The {Describe(source, adapterName)} at '{layer}' holds {(nan > 0 ? $"{nan:N0} NaN" : "")}{(nan > 0 && inf > 0 ? " and " : "")}{(inf > 0 ? $"{inf:N0} infinite" : "")} " +
                $"value(s) out of {m.numel():N0}, so it has no singular spectrum. Training diverged or the weights were loaded wrong: " +
                "lower the learning rate or reload the weights, and check with torch.isfinite(...).all().", nameof(matrix));
        var values = linalg.svdvals(m).data<double>().ToArray();
        return new SingularSpectrum(layer, source, adapterName, matrix.shape, values, adapterRank);
    }

    /// <summary>The spectrum of the base weight of the module at <paramref name="layer"/> (an adapter layer's
    /// wrapped module, or any module with a <c>weight</c>).</summary>
    public static SingularSpectrum OfWeight(Module model, string layer)
    {
        var module = FindModule(model, layer);
        var baseModule = module is AdapterLayer adapted ? adapted.BaseLayer : module;
        var weight = baseModule.get_parameter("weight")
            ?? throw new ArgumentException($"'{layer}' is a {baseModule.GetType().Name} without a 'weight' parameter; choose a Linear, Embedding or convolution layer.", nameof(layer));
        return Of(weight, layer, SpectrumSource.Weight, null, module is AdapterLayer l && l.ActiveAdapters.Count > 0 ? l[l.ActiveAdapters[0]].Rank : null);
    }

    /// <summary>The spectrum of the change full fine-tuning made at <paramref name="layer"/>: W of
    /// <paramref name="tuned"/> minus W of <paramref name="reference"/> (a copy of the model before training).</summary>
    public static SingularSpectrum OfFullDelta(Module tuned, Module reference, string layer)
    {
        ArgumentNullException.ThrowIfNull(tuned);
        ArgumentNullException.ThrowIfNull(reference);
        Tensor WeightOf(Module model, string which)
        {
            var module = FindModule(model, layer);
            var baseModule = module is AdapterLayer adapted ? adapted.BaseLayer : module;
            return baseModule.get_parameter("weight")
                ?? throw new ArgumentException($"'{layer}' of the {which} model is a {baseModule.GetType().Name} without a 'weight' parameter.", nameof(layer));
        }
        var tunedWeight = WeightOf(tuned, "fine-tuned");
        var referenceWeight = WeightOf(reference, "reference");
        if (!tunedWeight.shape.SequenceEqual(referenceWeight.shape))
            throw new ArgumentException($"'{layer}' has shape [{string.Join(", ", tunedWeight.shape)}] in the fine-tuned model but [{string.Join(", ", referenceWeight.shape)}] in the reference; compare two copies of the same model.", nameof(reference));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return Of(tunedWeight.detach().to(ScalarType.Float64, CPU) - referenceWeight.detach().to(ScalarType.Float64, CPU), layer, SpectrumSource.FullDelta);
    }

    /// <summary>The spectrum of the base weight at <paramref name="layer"/> of an adapted model, with the rank of its
    /// first active adapter marked.</summary>
    public static SingularSpectrum OfWeight(PeftModel peft, string layer) => OfWeight(peft.Model, layer);

    /// <summary>The spectrum of adapter <paramref name="adapterName"/>'s weight change at <paramref name="layer"/>
    /// (default: the first active adapter), with its rank marked.</summary>
    public static SingularSpectrum OfDelta(PeftModel peft, string layer, string? adapterName = null) =>
        OfAdapter(peft, layer, adapterName, SpectrumSource.Delta);

    /// <summary>The spectrum of W + ΔW at <paramref name="layer"/> for adapter <paramref name="adapterName"/>.</summary>
    public static SingularSpectrum OfAdapted(PeftModel peft, string layer, string? adapterName = null) =>
        OfAdapter(peft, layer, adapterName, SpectrumSource.Adapted);

    /// <summary>One spectrum per adapter layer (deltas of <paramref name="adapterName"/>, default the first active one).</summary>
    public static IReadOnlyList<SingularSpectrum> OfDeltas(PeftModel peft, string? adapterName = null) =>
        peft.Layers.Where(l => l.Contains(adapterName ?? FirstActive(peft))).Select(l => OfDelta(peft, l.Path, adapterName)).ToList();

    static SingularSpectrum OfAdapter(PeftModel peft, string layer, string? adapterName, SpectrumSource source)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var name = adapterName ?? FirstActive(peft);
        var adapterLayer = FindModule(peft.Model, layer) as AdapterLayer
            ?? throw new ArgumentException($"'{layer}' holds no adapter. Adapter layers: {string.Join(", ", peft.Layers.Select(l => l.Path))}.", nameof(layer));
        if (!adapterLayer.Contains(name))
            throw new ArgumentException($"Layer '{layer}' has no adapter '{name}'; it has {string.Join(", ", adapterLayer.AdapterNames)}.", nameof(adapterName));
        var adapter = adapterLayer[name];
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var delta = adapter.DeltaWeight(adapterLayer.BaseLayer)
            ?? throw new ArgumentException($"Adapter '{name}' at '{layer}' ({adapter.MethodName}) changes the layer's output, not its weight, so it has no weight delta to analyse; use --of weight.", nameof(adapterName));
        if (source == SpectrumSource.Delta) return Of(delta, layer, source, name, adapter.Rank);
        var weight = AdapterModule.BaseWeight(adapterLayer.BaseLayer);
        // A merged adapter is already inside the base weight.
        var adapted = adapterLayer.MergedAdapters.Contains(name) ? weight : weight + delta.to(weight.dtype);
        return Of(adapted, layer, source, name, adapter.Rank);
    }

    static string Describe(SpectrumSource source, string? adapterName) => source switch
    {
        SpectrumSource.FullDelta => "full fine-tuning change ΔW",
        SpectrumSource.Delta => $"weight change ΔW of adapter '{adapterName}'",
        SpectrumSource.Adapted => $"adapted weight W + ΔW ('{adapterName}')",
        _ => "weight",
    };

    static string FirstActive(PeftModel peft) =>
        peft.ActiveAdapters.FirstOrDefault() ?? peft.AdapterNames.FirstOrDefault()
        ?? throw new InvalidOperationException("The model has no adapters; attach one first.");

    internal static Module FindModule(Module model, string layer)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(layer);
        foreach (var (path, module) in model.named_modules())
            if (path == layer) return module;
        var paths = TargetMatcher.AdaptableModules(model).Select(m => m.Path).ToList();
        var close = paths.OrderBy(p => TargetMatcher.Levenshtein(p, layer)).Take(3).ToList();
        throw new ArgumentException($"No module '{layer}' in {model.GetName()}. Closest: {string.Join(", ", close)}; layers: {string.Join(", ", paths.Take(12))}{(paths.Count > 12 ? ", ..." : "")}.", nameof(layer));
    }

    static IReadOnlyList<double> Cumulative(IReadOnlyList<double> values)
    {
        double total = values.Sum(v => v * v);
        var result = new double[values.Count];
        double running = 0;
        for (int i = 0; i < values.Count; i++)
        {
            running += values[i] * values[i];
            result[i] = total > 0 ? running / total : 0;
        }
        return result;
    }
}

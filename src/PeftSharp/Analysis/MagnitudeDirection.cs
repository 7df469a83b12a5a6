using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Analysis;

/// <summary>
/// DoRA's weight decomposition analysis (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", §3, eq. 2-4):
/// a weight W = m · V / ‖V‖_c splits into magnitudes m (one per output unit) and unit directions; between a weight W₀ and
/// a fine-tuned W' over their n output units
/// ΔM = Σ_n |m'_n − m₀_n| / n and ΔD = Σ_n (1 − cos(W'_n, W₀_n)) / n.
/// The paper's "columns" are the output units; for a Linear weight stored (out, in) as here (and in PyTorch) they are its
/// rows, the vectors DoRA's <c>lora_magnitude_vector</c> (length out) holds the norms of. Works for any pair: full
/// fine-tuning, LoRA (W + s·B A), DoRA.
/// </summary>
/// <param name="Layer">The layer, or any label.</param>
/// <param name="DeltaMagnitude">ΔM, mean absolute change of the row norms.</param>
/// <param name="DeltaDirection">ΔD, mean of 1 − cosine between matching rows.</param>
public sealed record MagnitudeDirection(string Layer, double DeltaMagnitude, double DeltaDirection)
{
    public override string ToString() => $"{Layer}: ΔM {DeltaMagnitude:G4}, ΔD {DeltaDirection:G4}";

    /// <summary>ΔM and ΔD between <paramref name="original"/> and <paramref name="updated"/>, both (out, in) (a kernel of
    /// more dimensions is read as (out, rest)); float64 on the CPU.</summary>
    public static MagnitudeDirection Of(Tensor original, Tensor updated, string layer = "W")
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(updated);
        if (!original.shape.SequenceEqual(updated.shape))
            throw new ArgumentException($"'{layer}': the two weights must have the same shape; got [{string.Join(", ", original.shape)}] and [{string.Join(", ", updated.shape)}].");
        if (original.dim() < 2)
            throw new ArgumentException($"'{layer}': magnitude and direction are per output unit of a matrix; got shape [{string.Join(", ", original.shape)}].");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var w0 = original.detach().to(ScalarType.Float64, CPU).reshape(original.shape[0], -1);   // (out, in)
        var w1 = updated.detach().to(ScalarType.Float64, CPU).reshape(updated.shape[0], -1);
        if (!isfinite(w0).all().item<bool>() || !isfinite(w1).all().item<bool>())
            throw new ArgumentException($"'{layer}': a weight holds NaN or infinite values; check the training run.");
        var m0 = linalg.vector_norm(w0, dims: [1]);                                                // (out)
        var m1 = linalg.vector_norm(w1, dims: [1]);
        double deltaM = (m1 - m0).abs().mean().item<double>();
        var cosine = (w0 * w1).sum(1) / (m0 * m1).clamp_min(1e-300);                                // (out)
        double deltaD = (1 - cosine).mean().item<double>();
        return new MagnitudeDirection(layer, deltaM, deltaD);
    }

    /// <summary>ΔM and ΔD of adapter <paramref name="adapterName"/> (default the first active one) at <paramref name="layer"/>:
    /// W against W + ΔW (for DoRA, its merged weight).</summary>
    public static MagnitudeDirection OfAdapter(PeftModel peft, string layer, string? adapterName = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var name = adapterName ?? peft.ActiveAdapters.FirstOrDefault() ?? peft.AdapterNames.FirstOrDefault()
            ?? throw new InvalidOperationException("The model has no adapters; attach one first.");
        var adapterLayer = SingularSpectrum.FindModule(peft.Model, layer) as AdapterLayer
            ?? throw new ArgumentException($"'{layer}' holds no adapter. Adapter layers: {string.Join(", ", peft.Layers.Select(l => l.Path))}.", nameof(layer));
        if (!adapterLayer.Contains(name))
            throw new ArgumentException($"Layer '{layer}' has no adapter '{name}'; it has {string.Join(", ", adapterLayer.AdapterNames)}.", nameof(adapterName));
        if (adapterLayer.MergedAdapters.Contains(name))
            throw new InvalidOperationException($"Adapter '{name}' is merged into '{layer}', so the base weight already holds it; unmerge first.");
        using var scope = NewDisposeScope();
        var adapter = adapterLayer[name];
        var delta = adapter.DeltaWeight(adapterLayer.BaseLayer)
            ?? throw new ArgumentException($"Adapter '{name}' at '{layer}' ({adapter.MethodName}) changes the layer's output, not its weight.", nameof(adapterName));
        var weight = AdapterModule.BaseWeight(adapterLayer.BaseLayer);
        return Of(weight, weight + delta.to(weight.dtype), layer);
    }

    /// <summary>ΔM and ΔD per layer between two copies of a model (e.g. before and after full fine-tuning), for every
    /// <c>weight</c> of the modules at <paramref name="layers"/>.</summary>
    public static IReadOnlyList<MagnitudeDirection> OfModels(Module before, Module after, IEnumerable<string> layers) =>
        layers.Select(layer =>
        {
            var w0 = SingularSpectrum.FindModule(before, layer).get_parameter("weight")
                ?? throw new ArgumentException($"'{layer}' has no 'weight' parameter.", nameof(layers));
            var w1 = SingularSpectrum.FindModule(after, layer).get_parameter("weight")
                ?? throw new ArgumentException($"'{layer}' has no 'weight' parameter in the second model.", nameof(layers));
            return Of(w0, w1, layer);
        }).ToList();
}

/// <summary>
/// DoRA's Figure 2 as a record: ΔM against ΔD per layer (and checkpoint or seed) for several ways of fine-tuning, with
/// each series' Pearson correlation between ΔM and ΔD. The DoRA paper reads the sign: full fine-tuning and DoRA show a
/// negative correlation (a layer changes either its magnitudes or its directions a lot), LoRA a positive one (both move
/// together).
/// </summary>
/// <param name="Title">What the points are, e.g. "ViT, MNIST → Fashion-MNIST, 16 adapted layers, seed 1".</param>
/// <param name="Series">Series name (e.g. "LoRA") → its points.</param>
public sealed record MagnitudeDirectionScatter(string Title, IReadOnlyDictionary<string, IReadOnlyList<MagnitudeDirection>> Series)
{
    /// <summary>Pearson's correlation of ΔM and ΔD over one series' points (NaN with fewer than 2 points or no spread).</summary>
    public static double Correlation(IReadOnlyList<MagnitudeDirection> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        if (points.Count < 2) return double.NaN;
        double mx = points.Average(p => p.DeltaDirection), my = points.Average(p => p.DeltaMagnitude);
        double sxy = points.Sum(p => (p.DeltaDirection - mx) * (p.DeltaMagnitude - my));
        double sxx = points.Sum(p => (p.DeltaDirection - mx) * (p.DeltaDirection - mx));
        double syy = points.Sum(p => (p.DeltaMagnitude - my) * (p.DeltaMagnitude - my));
        return sxx == 0 || syy == 0 ? double.NaN : sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>Each series' correlation, in the order of <see cref="Series"/>.</summary>
    public IReadOnlyDictionary<string, double> Correlations => Series.ToDictionary(s => s.Key, s => Correlation(s.Value));
}

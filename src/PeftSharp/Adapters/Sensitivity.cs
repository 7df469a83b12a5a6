using System.Text.RegularExpressions;
using PeftSharp.Analysis;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// SPT's parameter sensitivity (He et al. 2023, "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning"): for every
/// entry w_n of the measured weight matrices, s_n = Σ_b (∂L_b / ∂w_n)², the squared gradient of the task loss L_b
/// accumulated over the calibration batches b (the paper's first-order Taylor criterion: tuning w_n alone by one
/// gradient step lowers the loss by about g_n²). As the authors' code computes it (ziplab/SPT, <c>get_sensitivity</c>:
/// per batch <c>zero_grad</c>, <c>backward</c>, add <c>grad**2</c>). One score tensor per measured layer, the shape of its
/// weight (out, in), float64 on the CPU.
/// </summary>
public sealed class SensitivityMap : IDisposable
{
    readonly Dictionary<string, Tensor> _scores;

    internal SensitivityMap(IReadOnlyList<string> paths, Dictionary<string, Tensor> scores, int batches)
    {
        Paths = paths;
        _scores = scores;
        Batches = batches;
    }

    /// <summary>The measured layers, in the order given.</summary>
    public IReadOnlyList<string> Paths { get; }

    /// <summary>How many calibration batches the scores sum over (forward passes through the first measured layer).</summary>
    public int Batches { get; }

    /// <summary>s = Σ_b g_b² of the layer at <paramref name="path"/>: (out, in), float64, CPU.</summary>
    public Tensor this[string path] => _scores.TryGetValue(path, out var s) ? s
        : throw new KeyNotFoundException($"'{path}' was not measured; the measured layers are {string.Join(", ", Paths.Select(p => $"'{p}'"))}.");

    /// <summary>The number of entries over all measured matrices.</summary>
    public long TotalEntries => Paths.Sum(p => _scores[p].numel());

    /// <summary>
    /// The global top-τ: the <paramref name="tau"/> most sensitive entries over all measured matrices together, as each
    /// layer's flat (row-major) indices into its weight, ascending. Ties at the threshold are broken by position, so
    /// exactly τ entries are chosen.
    /// </summary>
    public IReadOnlyDictionary<string, long[]> TopEntries(long tau)
    {
        if (tau < 1 || tau > TotalEntries)
            throw new ArgumentOutOfRangeException(nameof(tau), tau, $"τ counts weight entries: between 1 and the {TotalEntries} entries measured.");
        using var scope = NewDisposeScope();
        var all = cat(Paths.Select(p => _scores[p].flatten()).ToArray());                    // (Σ out·in)
        // A stable descending sort: equal scores keep their order, so the choice does not depend on the sort kernel.
        var chosen = all.sort(descending: true, stable: true).Indices[..(int)tau].sort().Values.data<long>().ToArray();
        var result = new Dictionary<string, long[]>();
        long offset = 0;
        foreach (var path in Paths)
        {
            long size = _scores[path].numel(), start = offset;
            result[path] = chosen.Where(i => i >= start && i < start + size).Select(i => i - start).ToArray();
            offset += size;
        }
        return result;
    }

    /// <summary>How many of the global top-τ entries each layer holds.</summary>
    public IReadOnlyDictionary<string, int> SensitiveCounts(long tau) => TopEntries(tau).ToDictionary(p => p.Key, p => p.Value.Length);

    /// <summary>
    /// Where the top-τ entries sit, layer × module: rows are the layer (the path up to its last number, e.g.
    /// "model.layers.1"), columns the module within it (e.g. "self_attn.q_proj"); the value is the count of sensitive
    /// entries, or with <paramref name="share"/> that count over the matrix's size. Drawn by the heatmap views.
    /// </summary>
    public LabelledHeatmap Heatmap(long tau, bool share = false)
    {
        var counts = SensitiveCounts(tau);
        var cells = Paths.Select(p => (Split: SplitLayer(p), Value: share ? counts[p] / (double)_scores[p].numel() : counts[p])).ToList();
        var rows = cells.Select(c => c.Split.Layer).Distinct().ToList();
        var columns = cells.Select(c => c.Split.Module).Distinct().ToList();
        var values = rows.Select(r => (IReadOnlyList<double>)columns.Select(c =>
            cells.FirstOrDefault(x => x.Split.Layer == r && x.Split.Module == c).Value).ToArray()).ToList();
        return new LabelledHeatmap($"sensitive entries (top {tau} of {TotalEntries})", rows, columns, values,
                                   "layer", "module", share ? "share of the matrix" : "sensitive entries");
    }

    /// <summary>"a.layers.3.mlp.fc1" → ("a.layers.3", "mlp.fc1"); a path without a numbered segment is its own
    /// module in the row "model".</summary>
    internal static (string Layer, string Module) SplitLayer(string path)
    {
        var match = Regex.Match(path, @"^(.*\.\d+)\.(.+)$");
        return match.Success ? (match.Groups[1].Value, match.Groups[2].Value) : ("model", path);
    }

    public void Dispose()
    {
        foreach (var s in _scores.Values) s.Dispose();
        _scores.Clear();
    }
}

/// <summary>Measures <see cref="SensitivityMap"/>s.</summary>
public static class Sensitivity
{
    /// <summary>
    /// Runs <paramref name="runBatches"/>, which calls the model on a few calibration batches and <c>backward()</c> on
    /// each batch's loss, with every parameter frozen except the weights of the layers at <paramref name="paths"/>;
    /// returns s = Σ_b g_b² per weight entry, g_b the gradient of batch b's loss (one backward pass after each
    /// forward pass of a measured layer: the gradient is collected when the layer runs again, and at the end, so the
    /// action must not clear gradients itself).
    /// The model's <c>requires_grad</c> flags and the gradients it held are restored afterwards, also when a batch fails.
    /// </summary>
    public static SensitivityMap Measure(Module model, IReadOnlyList<string> paths, Action runBatches)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(runBatches);
        if (paths is not { Count: > 0 }) throw new ArgumentException("Name at least one layer whose weight to measure, e.g. [\"lin0\"].", nameof(paths));
        if (paths.GroupBy(p => p).FirstOrDefault(g => g.Count() > 1) is { } twice)
            throw new ArgumentException($"'{twice.Key}' is named twice; name each layer to measure once.", nameof(paths));
        var layers = paths.Select(p => (Path: p, Layer: LayerAt(model, p), Weight: WeightAt(model, p))).ToList();

        var parameters = model.parameters().ToList();
        var flags = parameters.Select(p => p.requires_grad).ToList();
        var measured = layers.Select(l => l.Weight).ToList();
        List<Tensor?> savedGrads;
        using (NewDisposeScope()) savedGrads = measured.Select(w => w.grad?.clone().DetachFromDisposeScope()).ToList();
        var sums = layers.ToDictionary(l => l.Path, l => zeros(l.Weight.shape, ScalarType.Float64).DetachFromDisposeScope());
        var removers = new List<Action>();
        int passes = 0;
        bool anyGradient = false;

        // Adds the gradient the weight collected since the last look (one backward pass) to its sum, then clears it.
        void Collect(int i)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            if (measured[i].grad is not { } grad) return;
            sums[layers[i].Path].add_(grad.to(ScalarType.Float64).cpu().square());
            grad.zero_();
            anyGradient = true;
        }

        try
        {
            foreach (var p in parameters) p.requires_grad = false;
            for (int i = 0; i < measured.Count; i++)
            {
                measured[i].requires_grad = true;
                measured[i].grad = null;
                int index = i;
                var handle = layers[i].Layer.register_forward_pre_hook((_, input) =>
                {
                    Collect(index);
                    if (index == 0) passes++;
                    return input;
                });
                removers.Add(handle.remove);
            }
            using (enable_grad()) runBatches();
            for (int i = 0; i < measured.Count; i++) Collect(i);
        }
        catch
        {
            foreach (var s in sums.Values) s.Dispose();
            throw;
        }
        finally
        {
            foreach (var remove in removers) remove();
            for (int i = 0; i < parameters.Count; i++) parameters[i].requires_grad = flags[i];
            for (int i = 0; i < measured.Count; i++)
            {
                measured[i].grad = savedGrads[i];
                savedGrads[i]?.Dispose();
            }
        }
        if (!anyGradient)
        {
            foreach (var s in sums.Values) s.Dispose();
            throw new ArgumentException("The calibration batches produced no gradient for the measured weights: the action must run the model on each batch and call backward() on its loss, " +
                                        "e.g. () => { foreach (var (x, y) in batches) loss(model.call(x), y).backward(); }.", nameof(runBatches));
        }
        return new SensitivityMap(paths, sums, passes);
    }

    static Module<Tensor, Tensor> LayerAt(Module model, string path) =>
        ModuleSurgery.Get(model, path) as Module<Tensor, Tensor>
        ?? throw new ArgumentException($"'{path}' is not a Tensor → Tensor layer of {model.GetName()}, so its weight's sensitivity cannot be measured.");

    static Parameter WeightAt(Module model, string path) => ModuleSurgery.Get(model, path) switch
    {
        AdapterLayer layer => AdapterModule.BaseWeight(layer.BaseLayer),
        Module<Tensor, Tensor> layer => layer.get_parameter("weight")
            ?? throw new ArgumentException($"'{path}' ({layer.GetType().Name}) has no 'weight' parameter to measure."),
        _ => throw new ArgumentException($"'{path}' is not a layer with a weight."),
    };
}

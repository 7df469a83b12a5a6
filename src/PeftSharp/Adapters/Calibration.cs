using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// Statistics of one layer's inputs over a calibration pass (CorDA-style initialisations need them): the uncentred
/// covariance C = Xᵀ X / N of the input rows x ∈ R^in, shape (in, in), in float64 on the CPU, and N.
/// </summary>
public sealed class LayerStatistics(Tensor covariance, long count) : IDisposable
{
    /// <summary>C = Xᵀ X / N, (in, in), float64.</summary>
    public Tensor Covariance { get; } = covariance;

    /// <summary>N, the number of input rows seen (batch × sequence positions).</summary>
    public long Count { get; } = count;

    public void Dispose() => Covariance.Dispose();
}

/// <summary>Collects <see cref="LayerStatistics"/> for chosen layers while the caller runs batches through the model.</summary>
public static class Calibration
{
    /// <summary>
    /// Runs <paramref name="runBatches"/> (which calls the model on a few batches the caller provides) without gradients,
    /// with a hook on each layer at <paramref name="paths"/> that accumulates Xᵀ X of its input; returns the statistics by
    /// path. The hooks are removed afterwards, also when a batch fails.
    /// </summary>
    public static Dictionary<string, LayerStatistics> Collect(Module model, IReadOnlyList<string> paths, Action runBatches)
    {
        var sums = new Dictionary<string, (Tensor Sum, long Count)>();
        var removers = new List<Action>();
        try
        {
            foreach (var path in paths)
            {
                if (ModuleSurgery.Get(model, path) is not Module<Tensor, Tensor> layer)
                    throw new ArgumentException($"'{path}' is not a Tensor → Tensor module, so its inputs cannot be collected.");
                var handle = layer.register_forward_pre_hook((_, input) =>
                {
                    using var scope = NewDisposeScope();
                    var rows = input.detach().reshape(-1, input.shape[^1]).to(ScalarType.Float64).cpu();   // (N, in)
                    var gram = rows.t().matmul(rows);                                                        // (in, in)
                    if (sums.TryGetValue(path, out var previous))
                    {
                        previous.Sum.add_(gram);
                        sums[path] = (previous.Sum, previous.Count + rows.shape[0]);
                    }
                    else sums[path] = (gram.DetachFromDisposeScope(), rows.shape[0]);   // outlives the forward pass's own scope
                    return input;
                });
                removers.Add(handle.remove);
            }
            using (no_grad()) runBatches();
        }
        catch
        {
            foreach (var (sum, _) in sums.Values) sum.Dispose();
            throw;
        }
        finally
        {
            foreach (var remove in removers) remove();
        }
        var missing = paths.Where(p => !sums.ContainsKey(p)).ToList();
        if (missing.Count > 0)
        {
            foreach (var (sum, _) in sums.Values) sum.Dispose();
            throw new ArgumentException($"The calibration batches never reached {string.Join(", ", missing.Select(m => $"'{m}'"))}: run the model on at least one batch in the calibration action.");
        }
        return sums.ToDictionary(p => p.Key, p => new LayerStatistics(p.Value.Sum.div_(p.Value.Count), p.Value.Count));
    }
}

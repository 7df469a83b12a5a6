using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// AdaLoRA's importance statistics of parameter entries (Zhang et al. 2023, eq. 8–11), kept per parameter tensor:
/// importance I = |p · ∇p| from the current gradient, sensitivity Ī ← β₁Ī + (1 − β₁)I, uncertainty
/// Ū ← β₂Ū + (1 − β₂)|I − Ī|, score s = Ī · Ū. PEFT's <c>RankAllocator.update_ipt</c> and <c>_element_score</c>.
/// AdaLoRA prunes the triplets of lowest score; IncreLoRA grows the modules of highest score.
/// </summary>
public sealed class ImportanceStatistics(double beta1, double beta2) : IDisposable
{
    readonly Dictionary<Parameter, (Tensor Sensitivity, Tensor Uncertainty)> _statistics = new(ReferenceEqualityComparer.Instance);

    /// <summary>Updates Ī and Ū of every entry of <paramref name="parameters"/> from their gradients now (an entry
    /// without a gradient has importance 0).</summary>
    public void Update(IEnumerable<Parameter> parameters)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var p in parameters)
        {
            var importance = p.grad is { } grad ? (p * grad).abs() : zeros_like(p);
            var (sensitivity, uncertainty) = _statistics.TryGetValue(p, out var s)
                ? s : (zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope());
            var newSensitivity = (sensitivity * beta1 + importance * (1 - beta1)).DetachFromDisposeScope();
            var newUncertainty = (uncertainty * beta2 + (importance - newSensitivity).abs() * (1 - beta2)).DetachFromDisposeScope();
            sensitivity.Dispose();
            uncertainty.Dispose();
            _statistics[p] = (newSensitivity, newUncertainty);
        }
    }

    /// <summary>s = Ī · Ū per entry of <paramref name="p"/>, shaped like it; zeros before its first update (a parameter
    /// just added has no history).</summary>
    public Tensor Score(Parameter p)
    {
        using var _ = no_grad();
        return _statistics.TryGetValue(p, out var s) ? s.Sensitivity * s.Uncertainty : zeros_like(p);
    }

    /// <summary>Forgets every statistic (AdaLoRA does at the end of its budget phase).</summary>
    public void Reset()
    {
        foreach (var (s, u) in _statistics.Values)
        {
            s.Dispose();
            u.Dispose();
        }
        _statistics.Clear();
    }

    public void Dispose() => Reset();
}

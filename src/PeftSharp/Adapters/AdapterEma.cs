using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>
/// An exponential moving average of an adapter's parameters, MOS's adapter merging (Sun et al. 2025, "MOS: Model
/// Surgery for Pre-Trained Model-Based Class-Incremental Learning"): while task t's adapter θ_t trains, a merged copy
/// follows it after every step, θ̂ ← β θ̂ + (1 − β) θ_t, starting from the previous task's merged adapter θ̂_{t−1}. The
/// merged adapter is what task t keeps: it carries task t's update on top of what the earlier tasks' adapters learned,
/// so the per-task adapters stay close to each other (less parameter drift between them) and retrieving a neighbour's
/// adapter by mistake costs less.
/// </summary>
/// <remarks>The average lives on the adapter's device, outside the model; <see cref="CopyInto"/> writes it into an
/// adapter (the trained one at the end of the task, or another of the same config). β = 0 keeps the trained adapter.</remarks>
public sealed class AdapterEma : IDisposable
{
    readonly PeftModel _peft;
    readonly string _adapter;
    readonly Dictionary<string, Tensor> _average;

    /// <param name="peft">The model holding the adapter that trains.</param>
    /// <param name="adapterName">The adapter that trains (θ_t).</param>
    /// <param name="decay">β in [0, 1): the weight of the average's past at each update.</param>
    /// <param name="start">θ̂ at the start (e.g. the previous task's merged adapter, from <see cref="AdapterState.Capture"/>);
    /// null: the adapter's current values.</param>
    public AdapterEma(PeftModel peft, string adapterName, double decay, IReadOnlyDictionary<string, Tensor>? start = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (!(decay >= 0 && decay < 1))
            throw new ArgumentOutOfRangeException(nameof(decay), decay, "The EMA decay β is in [0, 1): 0 keeps the trained adapter, values near 1 move the average slowly.");
        var live = AdapterState.Live(peft, adapterName);
        if (start is not null) AdapterState.Check(live, start, $"adapter '{adapterName}'");
        _peft = peft;
        _adapter = adapterName;
        Decay = decay;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        _average = live.ToDictionary(p => p.Key, p => (start?[p.Key] ?? p.Value).detach().to(p.Value.device).to(p.Value.dtype).clone().DetachFromDisposeScope());
    }

    /// <summary>β.</summary>
    public double Decay { get; }

    /// <summary>How many times <see cref="Update"/> ran.</summary>
    public int Updates { get; private set; }

    /// <summary>θ̂ ← β θ̂ + (1 − β) θ, from the adapter's values now (call it after every optimizer step).</summary>
    public void Update()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();   // the detached views
        foreach (var (key, p) in AdapterState.Live(_peft, _adapter))
            _average[key].mul_(Decay).add_(p.detach(), alpha: 1 - Decay);
        Updates++;
    }

    /// <summary>A copy of the average on the CPU (dispose it when done), e.g. the start of the next task's average.</summary>
    public Dictionary<string, Tensor> Capture()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return _average.ToDictionary(p => p.Key, p => p.Value.to(CPU).clone().DetachFromDisposeScope());
    }

    /// <summary>Writes the average into adapter <paramref name="adapterName"/> (default: the one that trains), in place.</summary>
    public void CopyInto(string? adapterName = null) => AdapterState.Restore(_peft, adapterName ?? _adapter, _average);

    public void Dispose()
    {
        AdapterState.DisposeAll(_average.Values);
        _average.Clear();
    }
}

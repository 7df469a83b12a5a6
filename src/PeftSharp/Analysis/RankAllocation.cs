using PeftSharp.Adapters;

namespace PeftSharp.Analysis;

/// <summary>A method that moves rank during training and records where it stands (AdaLoRA's allocator): what
/// <see cref="RankAllocation.Of"/> returns for its adapter instead of a single snapshot.</summary>
public interface IRankAllocationRecorder
{
    /// <summary>The ranks per layer now and the snapshots recorded during training.</summary>
    RankAllocation Allocation { get; }
}

/// <summary>The ranks of every layer at one training step (for methods whose ranks change while training).</summary>
public sealed record RankSnapshot(int Step, IReadOnlyList<int> Ranks);

/// <summary>
/// How an adapter's rank is spread across layers: one rank per layer now, and, for methods that move rank during
/// training (AdaLoRA-style budgets), the ranks per recorded step. Fixed-rank methods give one snapshot.
/// </summary>
public sealed record RankAllocation(string AdapterName, IReadOnlyList<string> Layers, IReadOnlyList<int> Ranks, IReadOnlyList<RankSnapshot> History)
{
    /// <summary>Σ ranks over the layers.</summary>
    public int TotalRank => Ranks.Sum();

    /// <summary>True when the recorded steps do not all have the same ranks (the chart then shows layer × step).</summary>
    public bool ChangesOverTime => History.Select(h => string.Join(",", h.Ranks)).Distinct().Count() > 1;

    /// <summary>A copy with the ranks at <paramref name="step"/> recorded and made current; a method that reallocates
    /// rank calls this after each change.</summary>
    public RankAllocation WithSnapshot(int step, IReadOnlyList<int> ranks)
    {
        if (ranks.Count != Layers.Count)
            throw new ArgumentException($"A snapshot needs one rank per layer ({Layers.Count}), not {ranks.Count}.", nameof(ranks));
        if (ranks.Any(r => r < 0)) throw new ArgumentOutOfRangeException(nameof(ranks), "Ranks are 0 or more.");
        if (History.Count > 0 && step < History[^1].Step)
            throw new ArgumentOutOfRangeException(nameof(step), step, $"Snapshots go forward in time; the last one is at step {History[^1].Step}.");
        return this with { Ranks = ranks.ToArray(), History = History.Append(new RankSnapshot(step, ranks.ToArray())).ToList() };
    }

    public override string ToString() =>
        $"rank allocation of '{AdapterName}': {Layers.Count} layers, total rank {TotalRank}" +
        (ChangesOverTime ? $", {History.Count} steps recorded" : "");

    /// <summary>The current rank of adapter <paramref name="adapterName"/> (default: the first active one) in every
    /// layer that holds it, as one snapshot at step 0; for an adapter whose method moved rank while training here
    /// (<see cref="IRankAllocationRecorder"/>, AdaLoRA), the allocation it recorded, layer × step.</summary>
    public static RankAllocation Of(PeftModel peft, string? adapterName = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var name = adapterName ?? peft.ActiveAdapters.FirstOrDefault() ?? peft.AdapterNames.FirstOrDefault()
            ?? throw new InvalidOperationException("The model has no adapters; attach one first.");
        if (!peft.AdapterNames.Contains(name))
            throw new ArgumentException($"No adapter named '{name}'. Adapters: {string.Join(", ", peft.AdapterNames)}.", nameof(adapterName));
        if (peft.FindMethodState<IRankAllocationRecorder>(name) is { } recorder) return recorder.Allocation;
        var layers = peft.Layers.Where(l => l.Contains(name)).ToList();
        var ranked = layers.Where(l => l[name].Rank is not null).ToList();
        if (ranked.Count == 0)
            throw new ArgumentException($"Adapter '{name}' ({layers.FirstOrDefault()?[name].MethodName ?? "?"}) has no rank: rank allocation applies to low-rank methods.", nameof(adapterName));
        var ranks = ranked.Select(l => l[name].Rank!.Value).ToArray();
        return new RankAllocation(name, ranked.Select(l => l.Path).ToList(), ranks, [new RankSnapshot(0, ranks)]);
    }
}

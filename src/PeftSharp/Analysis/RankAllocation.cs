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

    /// <summary>
    /// The final ranks as a layer × module heatmap (rows: the path up to its last number, e.g. "model.layers.1";
    /// columns: the module within it, e.g. "mlp.up_proj"), averaged over <paramref name="allocations"/> of the same
    /// layers (one per seed, say).
    /// </summary>
    public static LabelledHeatmap LayerByModule(IReadOnlyList<RankAllocation> allocations, string title)
    {
        if (allocations is not { Count: > 0 }) throw new ArgumentException("Give at least one rank allocation.", nameof(allocations));
        var layers = allocations[0].Layers;
        if (allocations.FirstOrDefault(a => !a.Layers.SequenceEqual(layers)) is { } other)
            throw new ArgumentException($"The allocations must cover the same layers; '{other.AdapterName}' has {other.Layers.Count} layers, not those of '{allocations[0].AdapterName}'.", nameof(allocations));
        var cells = layers.Select((path, i) => (Split: SensitivityMap.SplitLayer(path), Rank: allocations.Average(a => a.Ranks[i]))).ToList();
        var rows = cells.Select(c => c.Split.Layer).Distinct().ToList();
        var columns = cells.Select(c => c.Split.Module).Distinct().ToList();
        var values = rows.Select(r => (IReadOnlyList<double>)columns.Select(c =>
            cells.FirstOrDefault(x => x.Split.Layer == r && x.Split.Module == c).Rank).ToArray()).ToList();
        return new LabelledHeatmap(title, rows, columns, values, "layer", "module", allocations.Count > 1 ? $"final rank (mean of {allocations.Count})" : "final rank");
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

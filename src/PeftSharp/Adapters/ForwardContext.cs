using PeftSharp.Analysis;

namespace PeftSharp.Adapters;

/// <summary>
/// What travels with a forward pass besides its input: a task id per row (multi-task and routed adapters read it), an
/// adapter name per row (a mixed batch, see <see cref="PeftModel.UseAdapterPerRow"/>), and a place where routed adapters
/// record what they routed (the routing views read it back). It is in force only inside <see cref="PeftModel.Use"/>'s
/// scope: nothing leaks into a later call or notebook cell.
/// </summary>
public sealed class ForwardContext
{
    readonly List<RoutingLayer> _routing = [];

    /// <summary>One task id per row of the batch (0-based), or null.</summary>
    public IReadOnlyList<int>? TaskIds { get; init; }

    /// <summary>One adapter name per row (<see cref="AdapterLayer.BaseOnly"/> for the base model), or null for the active
    /// adapters on every row.</summary>
    public IReadOnlyList<string>? AdapterNames { get; init; }

    /// <summary>How a mixed batch (<see cref="AdapterNames"/>) is computed at each layer; see <see cref="Adapters.PerRowPath"/>.</summary>
    public PerRowPath PerRowPath { get; init; } = PerRowPath.Auto;

    /// <summary>What the routed adapters recorded in this context, in the order their layers ran.</summary>
    public IReadOnlyList<RoutingLayer> Routing
    {
        get { lock (_routing) return _routing.ToList(); }
    }

    /// <summary>Called by a routed adapter (<see cref="IReportsRouting"/>) for each forward pass in this context.</summary>
    public void ReportRouting(RoutingLayer routing)
    {
        lock (_routing) _routing.Add(routing);
    }

    /// <summary>The routing recorded so far, as the routing views take it.</summary>
    public RoutingWeights RoutingWeights(string rowKind = "token") =>
        Routing.Count > 0 ? new RoutingWeights(Routing, rowKind)
            : throw new InvalidOperationException("No adapter recorded any routing in this context: run a forward pass with a routed adapter inside it.");
}

/// <summary>How an <see cref="AdapterLayer"/> computes a batch whose rows use different adapters. Both give the same
/// outputs and gradients (to float rounding); "base only" rows, row order and dropout are the same.</summary>
public enum PerRowPath
{
    /// <summary><see cref="Batched"/> where a layer's rows use two or more adapters that all have a low-rank form, else
    /// <see cref="Grouped"/>.</summary>
    Auto,

    /// <summary>The base once for the whole batch, then every row's low-rank adapter in one gathered batched product
    /// (<see cref="LowRankBatch"/>, S-LoRA / Punica style); layers with an adapter that has no low-rank form fall back to
    /// <see cref="Grouped"/>.</summary>
    Batched,

    /// <summary>The reference: the base once, then one pass per distinct adapter over its own rows (index_select, apply,
    /// index_copy), as PEFT's mixed-batch forward.</summary>
    Grouped,
}

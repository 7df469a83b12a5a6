using PeftSharp.Adapters;

namespace PeftSharp.Analysis;

/// <summary>
/// The routing of one layer: row i (a token, an example or a task) sends weight <c>Weights[i][j]</c> to expert j.
/// Rows of a softmax router sum to 1; top-k routers leave zeros.
/// </summary>
public sealed record RoutingLayer
{
    public RoutingLayer(string layer, IReadOnlyList<string> rows, IReadOnlyList<string> experts, IReadOnlyList<IReadOnlyList<double>> weights)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(layer);
        if (experts.Count == 0) throw new ArgumentException("A routing layer needs at least one expert.", nameof(experts));
        if (weights.Count != rows.Count)
            throw new ArgumentException($"Routing at '{layer}': {rows.Count} row labels but {weights.Count} weight rows.", nameof(weights));
        for (int i = 0; i < weights.Count; i++)
            if (weights[i].Count != experts.Count)
                throw new ArgumentException($"Routing at '{layer}': row {i} ('{rows[i]}') has {weights[i].Count} weights for {experts.Count} experts.", nameof(weights));
        Layer = layer;
        Rows = rows;
        Experts = experts;
        Weights = weights;
    }

    /// <summary>The adapted layer's path.</summary>
    public string Layer { get; }

    /// <summary>Row labels: tokens, examples or tasks.</summary>
    public IReadOnlyList<string> Rows { get; }

    /// <summary>Expert labels (e.g. adapter names).</summary>
    public IReadOnlyList<string> Experts { get; }

    /// <summary>Weights[row][expert].</summary>
    public IReadOnlyList<IReadOnlyList<double>> Weights { get; }

    /// <summary>Mean weight each expert receives over the rows (its load).</summary>
    public IReadOnlyList<double> ExpertLoad =>
        Enumerable.Range(0, Experts.Count).Select(j => Rows.Count == 0 ? 0 : Weights.Average(r => r[j])).ToArray();
}

/// <summary>
/// Routing weights of a mixture-of-experts or multi-adapter routing method, per layer (task/token × expert). A routing
/// method (AdapterFusion's attention over its source adapters, for one) implements <see cref="IReportsRouting"/> on its
/// adapter module and <see cref="Collect"/> gathers what its layers recorded in their last forward pass.
/// </summary>
public sealed record RoutingWeights(IReadOnlyList<RoutingLayer> Layers, string RowKind = "token")
{
    public override string ToString() =>
        $"routing weights: {Layers.Count} layer(s), {(Layers.Count > 0 ? Layers[0].Experts.Count : 0)} experts, by {RowKind}";

    /// <summary>The routing recorded by every adapter of <paramref name="peft"/> that reports one (see
    /// <see cref="IReportsRouting"/>); throws, saying why, when none does.</summary>
    /// <param name="peft">The adapted model.</param>
    /// <param name="rowKind">What a row is ("token", "task"); null takes the routing adapters' own
    /// (<see cref="IReportsRouting.RowKind"/>).</param>
    public static RoutingWeights Collect(PeftModel peft, string? rowKind = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var reporting = peft.Layers.SelectMany(l => l.AdapterNames.Select(n => l[n])).OfType<IReportsRouting>().ToList();
        if (reporting.Count == 0)
        {
            var methods = peft.Layers.SelectMany(l => l.AdapterNames.Select(n => l[n].MethodName)).Distinct();
            throw new InvalidOperationException(
                $"No adapter in this model routes between experts (methods here: {string.Join(", ", methods)}). Routing weights come from " +
                "mixture methods whose adapters implement IReportsRouting; run a forward pass with such an adapter first.");
        }
        var layers = reporting.SelectMany(r => r.RoutingLayers).ToList();
        if (layers.Count == 0)
            throw new InvalidOperationException("The routing adapters have not recorded a forward pass yet: run the model on some input first.");
        return new RoutingWeights(layers, rowKind ?? string.Join(" / ", reporting.Select(r => r.RowKind).Distinct()));
    }
}

/// <summary>Implemented by an adapter module that routes between experts: it keeps the routing of its last forward pass.</summary>
public interface IReportsRouting
{
    /// <summary>The routing of the last forward pass, or null before the first one.</summary>
    RoutingLayer? LastRouting { get; }

    /// <summary>Every routing matrix the adapter has (several for multi-head routing: one per head); by default
    /// <see cref="LastRouting"/> alone.</summary>
    IReadOnlyList<RoutingLayer> RoutingLayers => LastRouting is { } routing ? [routing] : [];

    /// <summary>What a row of its routing is: "token" (per position), "task" (Poly's task × skill matrix), ...</summary>
    string RowKind => "token";
}

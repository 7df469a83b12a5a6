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

    /// <summary>
    /// The same routing with every layer's rows named by <paramref name="rowLabels"/> (row i gets label i), e.g. the
    /// tokens of the one sequence that ran, where the adapters could only number them. Labels should be distinct (a
    /// chart merges rows of equal label): prefix the position ("3 the"). Every layer must have exactly that many rows.
    /// </summary>
    public RoutingWeights WithRowLabels(IReadOnlyList<string> rowLabels)
    {
        ArgumentNullException.ThrowIfNull(rowLabels);
        if (Layers.FirstOrDefault(l => l.Rows.Count != rowLabels.Count) is { } other)
            throw new ArgumentException($"{rowLabels.Count} row labels, but the routing at '{other.Layer}' has {other.Rows.Count} rows: give one label per row " +
                                        "(run a batch of exactly the rows you label; adapters report at most their first rows, e.g. MolaAdapter.MaxRoutingRows).", nameof(rowLabels));
        return this with { Layers = Layers.Select(l => new RoutingLayer(l.Layer, rowLabels, l.Experts, l.Weights)).ToList() };
    }

    /// <summary>Only the layers whose path satisfies <paramref name="keep"/> (e.g. one projection per block), in order;
    /// throws, listing the layers, when none does.</summary>
    public RoutingWeights Where(Func<string, bool> keep)
    {
        ArgumentNullException.ThrowIfNull(keep);
        var kept = Layers.Where(l => keep(l.Layer)).ToList();
        return kept.Count > 0 ? this with { Layers = kept }
            : throw new ArgumentException($"No routing layer is kept; the layers are {string.Join(", ", Layers.Select(l => l.Layer))}.", nameof(keep));
    }
}

/// <summary>
/// How much each expert of each routed layer is used, over every row of one or more forward passes: load_{l,e} = the
/// mean over rows of the routing weight row → expert e at layer l (rows of a softmax or renormalised top-k router sum to
/// one, so a layer's loads sum to one and an even split is 1 / E_l). Layers may have different numbers of experts
/// (MoLA's allocations).
/// </summary>
public sealed record ExpertLoad
{
    public ExpertLoad(string title, IReadOnlyList<string> layers, IReadOnlyList<IReadOnlyList<string>> experts, IReadOnlyList<IReadOnlyList<double>> loads, IReadOnlyList<int> rows)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(title);
        if (layers.Count == 0) throw new ArgumentException("Expert load needs at least one layer.", nameof(layers));
        if (experts.Count != layers.Count || loads.Count != layers.Count || rows.Count != layers.Count)
            throw new ArgumentException($"Expert load '{title}': {layers.Count} layers but {experts.Count} expert lists, {loads.Count} load rows and {rows.Count} row counts.", nameof(loads));
        for (int i = 0; i < layers.Count; i++)
            if (loads[i].Count != experts[i].Count)
                throw new ArgumentException($"Expert load '{title}': layer '{layers[i]}' has {loads[i].Count} loads for {experts[i].Count} experts.", nameof(loads));
        (Title, Layers, Experts, Loads, Rows) = (title, layers, experts, loads, rows);
    }

    public string Title { get; }

    /// <summary>The routed layers' paths, in the order they ran.</summary>
    public IReadOnlyList<string> Layers { get; }

    /// <summary>Experts[layer]: the expert labels of each layer.</summary>
    public IReadOnlyList<IReadOnlyList<string>> Experts { get; }

    /// <summary>Loads[layer][expert]: the mean routing weight.</summary>
    public IReadOnlyList<IReadOnlyList<double>> Loads { get; }

    /// <summary>How many rows (tokens) each layer's loads average over.</summary>
    public IReadOnlyList<int> Rows { get; }

    /// <summary>Per layer, the largest load over the even split 1 / E_l (1 = perfectly even, E_l = one expert takes all).</summary>
    public IReadOnlyList<double> Imbalance => Loads.Select(l => l.Max() * l.Count).ToArray();

    /// <summary>
    /// The loads over every row of <paramref name="passes"/> (e.g. one <see cref="ForwardContext.RoutingWeights"/> per
    /// validation batch), layer by layer: each pass must hold the same layers with the same experts.
    /// </summary>
    public static ExpertLoad Of(string title, IEnumerable<RoutingWeights> passes)
    {
        ArgumentNullException.ThrowIfNull(passes);
        var list = passes.ToList();
        if (list.Count == 0) throw new ArgumentException("Give at least one forward pass's routing.", nameof(passes));
        var first = list[0].Layers;
        foreach (var (pass, i) in list.Select((p, i) => (p, i)))
            if (pass.Layers.Count != first.Count || pass.Layers.Zip(first).Any(z => z.First.Layer != z.Second.Layer || !z.First.Experts.SequenceEqual(z.Second.Experts)))
                throw new ArgumentException($"Pass {i} routed through layers [{string.Join(", ", pass.Layers.Select(l => $"{l.Layer} ({l.Experts.Count})"))}] " +
                                            $"but pass 0 through [{string.Join(", ", first.Select(l => $"{l.Layer} ({l.Experts.Count})"))}]: the passes must run the same adapters.", nameof(passes));
        var rows = first.Select((_, j) => list.Sum(p => p.Layers[j].Rows.Count)).ToArray();
        var loads = first.Select((layer, j) => (IReadOnlyList<double>)Enumerable.Range(0, layer.Experts.Count)
            .Select(e => rows[j] == 0 ? 0 : list.Sum(p => p.Layers[j].Weights.Sum(r => r[e])) / rows[j]).ToArray()).ToList();
        return new ExpertLoad(title, first.Select(l => l.Layer).ToList(), first.Select(l => l.Experts).ToList(), loads, rows);
    }

    public override string ToString() =>
        $"{Title}: {Layers.Count} layer(s), {Rows.Min():N0}{(Rows.Max() != Rows.Min() ? $"-{Rows.Max():N0}" : "")} rows each; largest load / even split " +
        string.Join(", ", Imbalance.Select(v => v.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture)));
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

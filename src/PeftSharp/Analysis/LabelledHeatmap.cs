namespace PeftSharp.Analysis;

/// <summary>
/// A table of numbers with named rows and columns, drawn as a heatmap: task × skill routing, task × task similarities,
/// which weights a mask trains, learned scales per source adapter. <see cref="RoutingLayer"/> is the routing of one
/// adapted layer (rows that sum to one); this is the general case, with signed values allowed (a chart centres its
/// colours on zero then, so a negative scale looks different from a positive one).
/// </summary>
public sealed record LabelledHeatmap
{
    public LabelledHeatmap(string title, IReadOnlyList<string> rows, IReadOnlyList<string> columns, IReadOnlyList<IReadOnlyList<double>> values,
                           string rowKind = "row", string columnKind = "column", string valueKind = "value")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(title);
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(columns);
        ArgumentNullException.ThrowIfNull(values);
        if (rows.Count == 0 || columns.Count == 0) throw new ArgumentException($"Heatmap '{title}' needs at least one row and one column.", nameof(values));
        if (values.Count != rows.Count)
            throw new ArgumentException($"Heatmap '{title}': {rows.Count} row labels but {values.Count} rows of values.", nameof(values));
        for (int i = 0; i < values.Count; i++)
        {
            if (values[i].Count != columns.Count)
                throw new ArgumentException($"Heatmap '{title}': row {i} ('{rows[i]}') has {values[i].Count} values for {columns.Count} columns.", nameof(values));
            if (values[i].Any(v => !double.IsFinite(v)))
                throw new ArgumentException($"Heatmap '{title}': row {i} ('{rows[i]}') has a value that is not finite.", nameof(values));
        }
        (Title, Rows, Columns, Values, RowKind, ColumnKind, ValueKind) = (title, rows, columns, values, rowKind, columnKind, valueKind);
    }

    public string Title { get; }

    public IReadOnlyList<string> Rows { get; }

    public IReadOnlyList<string> Columns { get; }

    /// <summary>Values[row][column].</summary>
    public IReadOnlyList<IReadOnlyList<double>> Values { get; }

    /// <summary>What a row is (axis title), e.g. "task".</summary>
    public string RowKind { get; }

    /// <summary>What a column is (axis title), e.g. "skill".</summary>
    public string ColumnKind { get; }

    /// <summary>What a value is (colour bar title), e.g. "routing weight", "cosine".</summary>
    public string ValueKind { get; }

    public double Min => Values.Min(r => r.Min());

    public double Max => Values.Max(r => r.Max());

    /// <summary>Whether values of both signs occur: a chart should then centre its colour scale on zero.</summary>
    public bool HasBothSigns => Min < 0 && Max > 0;

    /// <summary>The value at (<paramref name="row"/>, <paramref name="column"/>) by label.</summary>
    public double this[string row, string column]
    {
        get
        {
            int i = IndexOf(Rows, row, "row"), j = IndexOf(Columns, column, "column");
            return Values[i][j];
        }
    }

    static int IndexOf(IReadOnlyList<string> labels, string label, string kind)
    {
        for (int i = 0; i < labels.Count; i++) if (labels[i] == label) return i;
        throw new KeyNotFoundException($"No {kind} '{label}'; the {kind}s are {string.Join(", ", labels.Select(l => $"'{l}'"))}.");
    }

    /// <summary>Rows become columns.</summary>
    public LabelledHeatmap Transposed() => new(Title, Columns, Rows,
        Columns.Select((_, j) => (IReadOnlyList<double>)Rows.Select((_, i) => Values[i][j]).ToArray()).ToArray(), ColumnKind, RowKind, ValueKind);

    /// <summary>One routing layer as a heatmap (rows × experts).</summary>
    public static LabelledHeatmap FromRouting(RoutingLayer layer, string rowKind = "token", string? title = null) =>
        new(title ?? $"routing at {layer.Layer}", layer.Rows, layer.Experts, layer.Weights, rowKind, "expert", "weight");

    public override string ToString() => $"{Title}: {Rows.Count} {RowKind} × {Columns.Count} {ColumnKind}, {ValueKind} from {Min:0.###} to {Max:0.###}";
}

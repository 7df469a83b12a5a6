namespace PeftSharp.Data;

/// <summary>The class names of a label column, in id order: <c>Names[id]</c> is the name of class <c>id</c>.</summary>
public sealed class LabelSet
{
    readonly Dictionary<string, int> _ids;

    public LabelSet(IEnumerable<string> names)
    {
        Names = names.ToArray();
        _ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < Names.Count; i++)
            if (!_ids.TryAdd(Names[i], i)) throw new ArgumentException($"The label '{Names[i]}' appears twice.", nameof(names));
    }

    public IReadOnlyList<string> Names { get; }

    public int Count => Names.Count;

    public string this[int id] => id >= 0 && id < Names.Count ? Names[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"Label ids run from 0 to {Names.Count - 1}.");

    /// <summary>The id of <paramref name="name"/>, or an exception listing the names.</summary>
    public int Id(string name) => _ids.TryGetValue(name, out int id) ? id
        : throw new ArgumentException($"Unknown label '{name}'; the labels are {string.Join(", ", Names)}.", nameof(name));

    public bool Contains(string name) => _ids.ContainsKey(name);

    public override string ToString() => string.Join(", ", Names.Select((n, i) => $"{i}={n}"));
}

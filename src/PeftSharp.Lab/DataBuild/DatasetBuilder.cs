using PeftSharp.Data;

namespace PeftSharp.Lab.DataBuild;

/// <summary>One dataset of <c>data/</c>: fetches its source package, chooses the splits with a seed, and writes the
/// files the readers in <see cref="Datasets"/> expect, with <c>meta.json</c>.</summary>
abstract class DatasetBuilder
{
    /// <summary>The seed every dataset's splits are chosen with (recorded in each meta.json).</summary>
    public const ulong DefaultSeed = 42;

    public abstract string Name { get; }

    public abstract string Summary { get; }

    /// <summary>Writes the dataset into <paramref name="folder"/> (created empty by the caller).</summary>
    public abstract DatasetMeta Build(Packages packages, string folder, TextWriter log);

    public static IReadOnlyList<DatasetBuilder> All { get; } =
        [new SentimentBuilder(), new BrownBuilder(), new MnistBuilder(), new FashionMnistBuilder(), new MultiTaskBuilder()];

    public static Dictionary<string, int> SplitSizes(int train, int validation, int test) =>
        new() { ["train"] = train, ["validation"] = validation, ["test"] = test };

    /// <summary>Cuts <paramref name="items"/> (already shuffled) into test, validation, then train: test takes the first
    /// <paramref name="test"/>, validation the next <paramref name="validation"/>, train the rest.</summary>
    public static (List<T> Train, List<T> Validation, List<T> Test) Cut<T>(IReadOnlyList<T> items, int validation, int test)
    {
        if (validation + test > items.Count) throw new InvalidOperationException($"Cannot take {test} test and {validation} validation items from {items.Count}.");
        return (items.Skip(test + validation).ToList(), items.Skip(test).Take(validation).ToList(), items.Take(test).ToList());
    }
}

namespace PeftSharp.Data;

/// <summary>The three fixed parts of every dataset in <c>data/</c>: chosen once by a seed when the dataset was built and
/// stored in its files, so every run and every notebook sees the same rows.</summary>
public enum Split { Train, Validation, Test }

public static class SplitNames
{
    /// <summary>The name used in file names and <c>meta.json</c>: <c>train</c>, <c>validation</c>, <c>test</c>.</summary>
    public static string FileName(this Split split) => split switch
    {
        Split.Train => "train",
        Split.Validation => "validation",
        Split.Test => "test",
        _ => throw new ArgumentOutOfRangeException(nameof(split), split, "Choose Split.Train, Split.Validation or Split.Test."),
    };

    public static IReadOnlyList<Split> All { get; } = [Split.Train, Split.Validation, Split.Test];
}

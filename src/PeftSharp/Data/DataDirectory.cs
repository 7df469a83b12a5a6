namespace PeftSharp.Data;

/// <summary>
/// Finds the folder that holds the datasets (the repository's <c>data/</c>, one subfolder per dataset, each with a
/// <c>meta.json</c>). In order: <see cref="Override"/> if set; the <c>PEFTSHARP_DATA</c> environment variable if set;
/// otherwise a <c>data</c> folder in the current directory or any folder above it, then in the application's base
/// directory (<see cref="AppContext.BaseDirectory"/>) or above it, so code run from anywhere inside a clone (a notebook,
/// a test, <c>dotnet run</c>) finds the repository's copy, and an application that copies <c>data/</c> next to its
/// binaries finds that. Nothing is downloaded at run time.
/// </summary>
public static class DataDirectory
{
    public const string EnvironmentVariable = "PEFTSHARP_DATA";

    /// <summary>Set to use this folder instead of searching (null: search).</summary>
    public static string? Override { get; set; }

    /// <summary>The folder of <paramref name="dataset"/> (e.g. <c>sentiment</c>), or an exception that says where it
    /// looked and how to fix it.</summary>
    public static string Find(string dataset) => Find(dataset, Override, Environment.GetEnvironmentVariable(EnvironmentVariable),
                                                      [Environment.CurrentDirectory, AppContext.BaseDirectory]);

    /// <summary>The search itself, with every input explicit (tests use it).</summary>
    public static string Find(string dataset, string? overrideDirectory, string? environmentValue, IEnumerable<string> startDirectories) =>
        Find(dataset, "dataset", DatasetMeta.FileName, $"data build {dataset}", overrideDirectory, environmentValue, startDirectories);

    /// <summary>The folder of the pretrained model <paramref name="name"/> under <c>data/models/</c> (e.g.
    /// <c>tiny-gpt-brown</c>), found as datasets are; it holds a <c>config.json</c>.</summary>
    public static string FindModel(string name) => FindModel(name, Override, Environment.GetEnvironmentVariable(EnvironmentVariable),
                                                             [Environment.CurrentDirectory, AppContext.BaseDirectory]);

    /// <summary>The model search with every input explicit (tests use it).</summary>
    public static string FindModel(string name, string? overrideDirectory, string? environmentValue, IEnumerable<string> startDirectories)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return Find($"{ModelsFolder}/{name}", "model", "config.json", "pretrain gpt` or `pretrain vit` (see data/models/README.md)", overrideDirectory, environmentValue, startDirectories);
    }

    /// <summary>The subfolder of the data folder that holds pretrained checkpoints.</summary>
    public const string ModelsFolder = "models";

    static string Find(string dataset, string kind, string marker, string rebuild, string? overrideDirectory, string? environmentValue, IEnumerable<string> startDirectories)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dataset);
        string? explicitRoot = overrideDirectory ?? (string.IsNullOrWhiteSpace(environmentValue) ? null : environmentValue);
        if (explicitRoot is not null)
        {
            string folder = Path.Combine(explicitRoot, dataset);
            if (File.Exists(Path.Combine(folder, marker))) return Path.GetFullPath(folder);
            string how = overrideDirectory is not null ? $"{nameof(DataDirectory)}.{nameof(Override)}" : $"the {EnvironmentVariable} environment variable";
            throw new DirectoryNotFoundException(
                $"The data folder '{explicitRoot}' (from {how}) has no {kind} '{dataset}' ({Path.Combine(folder, marker)} is missing). " +
                $"Point it at the repository's data/ folder, or rebuild the {kind} with `dotnet run --project src/PeftSharp.Lab -- {rebuild}`.");
        }

        var looked = new List<string>();
        foreach (var start in startDirectories.Where(s => !string.IsNullOrEmpty(s)).Select(Path.GetFullPath).Distinct())
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string folder = Path.Combine(dir.FullName, "data", dataset);
                if (File.Exists(Path.Combine(folder, marker))) return folder;
                looked.Add(Path.Combine(dir.FullName, "data"));
            }
        }
        throw new DirectoryNotFoundException(
            $"Could not find the {kind} '{dataset}': no data/{dataset}/{marker} in the current directory, the application's " +
            $"directory or any folder above them (looked in {string.Join(", ", looked.Distinct().Take(6))}{(looked.Count > 6 ? ", ..." : "")}). " +
            $"Run from inside a clone of the repository, copy its data/ folder next to your program, or set {EnvironmentVariable} " +
            $"(or {nameof(DataDirectory)}.{nameof(Override)}) to the data folder. To rebuild the {kind}: `dotnet run --project src/PeftSharp.Lab -- {rebuild}`.");
    }
}

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
    public static string Find(string dataset, string? overrideDirectory, string? environmentValue, IEnumerable<string> startDirectories)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dataset);
        string? explicitRoot = overrideDirectory ?? (string.IsNullOrWhiteSpace(environmentValue) ? null : environmentValue);
        if (explicitRoot is not null)
        {
            string folder = Path.Combine(explicitRoot, dataset);
            if (File.Exists(Path.Combine(folder, DatasetMeta.FileName))) return Path.GetFullPath(folder);
            string how = overrideDirectory is not null ? $"{nameof(DataDirectory)}.{nameof(Override)}" : $"the {EnvironmentVariable} environment variable";
            throw new DirectoryNotFoundException(
                $"The data folder '{explicitRoot}' (from {how}) has no dataset '{dataset}' ({Path.Combine(folder, DatasetMeta.FileName)} is missing). " +
                $"Point it at the repository's data/ folder, or rebuild the dataset with `dotnet run --project src/PeftSharp.Lab -- data build {dataset}`.");
        }

        var looked = new List<string>();
        foreach (var start in startDirectories.Where(s => !string.IsNullOrEmpty(s)).Select(Path.GetFullPath).Distinct())
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string folder = Path.Combine(dir.FullName, "data", dataset);
                if (File.Exists(Path.Combine(folder, DatasetMeta.FileName))) return folder;
                looked.Add(Path.Combine(dir.FullName, "data"));
            }
        }
        throw new DirectoryNotFoundException(
            $"Could not find the dataset '{dataset}': no data/{dataset}/{DatasetMeta.FileName} in the current directory, the application's " +
            $"directory or any folder above them (looked in {string.Join(", ", looked.Distinct().Take(6))}{(looked.Count > 6 ? ", ..." : "")}). " +
            $"Run from inside a clone of the repository, copy its data/ folder next to your program, or set {EnvironmentVariable} " +
            $"(or {nameof(DataDirectory)}.{nameof(Override)}) to the data folder. To rebuild the dataset: `dotnet run --project src/PeftSharp.Lab -- data build {dataset}`.");
    }
}

namespace PeftSharp.IO;

/// <summary>A NuGet package that a model needs is not in the global packages folder. The message says what to run.</summary>
public sealed class PackageNotFoundException(string message) : FileNotFoundException(message);

/// <summary>
/// Finds packages in the NuGet global packages folder, where <c>dotnet restore</c> puts them: the folder named by the
/// <c>NUGET_PACKAGES</c> environment variable, else <c>~/.nuget/packages</c>. Nothing here reaches the network.
/// </summary>
internal static class NuGetPackages
{
    /// <summary>The global packages folder restore uses on this machine (it may not exist yet).</summary>
    public static string GlobalPackagesFolder()
    {
        var configured = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (!string.IsNullOrWhiteSpace(configured)) return Path.GetFullPath(configured);
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
    }

    /// <summary>
    /// The path of <paramref name="relativePath"/> inside package <paramref name="id"/> <paramref name="version"/>
    /// (folder layout <c>&lt;id lowercased&gt;/&lt;version&gt;/...</c>). Throws <see cref="PackageNotFoundException"/>
    /// naming the folder searched and the exact lines that fetch the package when the file is not there.
    /// </summary>
    public static string FindFile(string id, string version, string relativePath, string? packagesFolder = null)
    {
        var root = packagesFolder ?? GlobalPackagesFolder();
        var path = Path.Combine(root, id.ToLowerInvariant(), version.ToLowerInvariant(), relativePath);
        if (File.Exists(path)) return path;
        throw new PackageNotFoundException(
            $"The NuGet package {id} {version} is not in the NuGet global packages folder {root} " +
            $"(looked for {path}; the folder comes from the NUGET_PACKAGES environment variable, else ~/.nuget/packages). " +
            $"In the PeftSharp repository run `dotnet restore` (the build downloads it). In your own project add " +
            $"<PackageDownload Include=\"{id}\" Version=\"[{version}]\" /> to an ItemGroup of your .csproj and run `dotnet restore`.");
    }
}

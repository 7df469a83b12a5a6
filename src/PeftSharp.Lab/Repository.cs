namespace PeftSharp.Lab;

/// <summary>The repository the lab runs in.</summary>
static class Repository
{
    /// <summary>The folder holding Interactive.sln, at or above the current directory.</summary>
    public static string Root()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Interactive.sln"))) return dir.FullName;
        throw new ArgumentException("Run this from inside the repository (no Interactive.sln above the current directory), or give --out DIR.");
    }
}

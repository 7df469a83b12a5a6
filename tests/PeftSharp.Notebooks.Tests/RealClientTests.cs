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
    [Fact]
    public async Task Quickstart_runs_in_dotnet_repl_against_the_packed_extension()
    {
        Assert.True(Directory.EnumerateFiles(Path.Combine(Repository.Root, "artifacts", "packages"), "PeftSharp.Interactive.*.nupkg").Any(),
            "artifacts/packages has no PeftSharp.Interactive package: building the solution packs it.");
        var restore = await Run("dotnet", ["tool", "restore"], Repository.Root, TimeSpan.FromMinutes(5));
        Assert.True(restore.Code == 0, $"dotnet tool restore failed:\n{restore.Output}");

        var outDir = Repository.NewTempDirectory();
        var executed = Path.Combine(outDir, "00-quickstart.ipynb");
        var clock = Stopwatch.StartNew();
        var run = await Run("dotnet", ["tool", "run", "dotnet-repl", "--", "--run", "00-quickstart.ipynb", "--exit-after-run", "--output-path", executed],
                            Repository.Notebooks, TimeSpan.FromMinutes(8));
        output.WriteLine($"dotnet repl: exit {run.Code} in {clock.Elapsed.TotalSeconds:0.0} s");
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
    }

    static async Task<(int Code, string Output)> Run(string file, string[] args, string directory, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(file) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
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

using System.Diagnostics;
using PeftSharp.Lab.Notebooks;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>run notebooks [paths...] [--out DIR] [--timeout SECONDS] [--full]</c>: executes notebooks (default: every .ipynb and
/// .dib under the repository's notebooks/ folder) with the real .NET Interactive C# kernel, writes the executed
/// notebooks and report.html to the output folder, and exits 1 naming the notebook, cell and error of any failure.
/// <c>--full</c> runs the notebooks' full setting: the kernels run in this process, so setting
/// <see cref="PeftSharp.Training.RunSettings.FullVariable"/> here is what their settings cells read.
/// </summary>
static class RunNotebooksCommand
{
    public static async Task<int> RunAsync(Arguments arguments)
    {
        // Cells redirect Console.Out/Error while they run (and a timed-out cell may restore them later): keep our own.
        var (stdout, stderr) = (Console.Out, Console.Error);
        var root = RepositoryRoot();
        var paths = arguments.Words.SkipWhile(w => w != "notebooks").Skip(1).ToList();
        if (paths.Count == 0) paths.Add(Path.Combine(root ?? ".", "notebooks"));
        var notebooks = paths.SelectMany(Expand).ToList();
        if (notebooks.Count == 0)
            throw new ArgumentException($"No notebooks (.ipynb or .dib) found in {string.Join(", ", paths)}.");
        var output = Path.GetFullPath(arguments.Text("out") ?? Path.Combine(root ?? ".", "artifacts", "notebooks"));
        var timeout = TimeSpan.FromSeconds(arguments.Int("timeout", 300));
        // The kernels run in this process: set the switch for them, and put it back afterwards (a host that runs the
        // command in-process, as the tests do, keeps its own setting).
        const string fullVariable = PeftSharp.Training.RunSettings.FullVariable;
        var previousSetting = Environment.GetEnvironmentVariable(fullVariable);
        if (arguments.Flag("full")) Environment.SetEnvironmentVariable(fullVariable, "1");
        try
        {
            return await RunAllAsync(notebooks, output, timeout, stdout, stderr);
        }
        finally
        {
            Environment.SetEnvironmentVariable(fullVariable, previousSetting);
        }
    }

    static async Task<int> RunAllAsync(List<FileInfo> notebooks, string output, TimeSpan timeout, TextWriter stdout, TextWriter stderr)
    {
        stdout.WriteLine($"notebooks: {notebooks.Count} to run, at most {timeout.TotalSeconds:0} s per cell, {(PeftSharp.Training.RunSettings.Full ? "full" : "quick")} setting, output in {output}");
        var clock = Stopwatch.StartNew();
        var runner = new NotebookRunner(timeout, output, stdout);
        var results = new List<NotebookResult>();
        foreach (var (notebook, i) in notebooks.Select((n, i) => (n, i)))
        {
            var shown = Path.GetRelativePath(Environment.CurrentDirectory, notebook.FullName);
            stdout.WriteLine($"[{i + 1}/{notebooks.Count}] {shown}");
            var result = await runner.RunAsync(notebook, shown);
            results.Add(result);
            stdout.WriteLine(result.Succeeded
                ? $"  ok: {result.Cells.Count} cells in {result.Duration.TotalSeconds:0.0} s -> {result.OutputPath}"
                : $"  FAILED: {result.FailureText}");
        }

        var report = Path.Combine(output, "report.html");
        Directory.CreateDirectory(output);
        File.WriteAllText(report, HtmlReport.Build(results, clock.Elapsed));
        stdout.WriteLine($"report: {report}");
        int failed = results.Count(r => !r.Succeeded);
        stdout.WriteLine($"{results.Count - failed} passed, {failed} failed ({clock.Elapsed.TotalSeconds:0.0} s)");
        foreach (var r in results.Where(r => !r.Succeeded))
            stderr.WriteLine($"error: {r.FailureText}");
        return failed == 0 ? 0 : 1;
    }

    static IEnumerable<FileInfo> Expand(string path)
    {
        if (Directory.Exists(path))
            return Directory.EnumerateFiles(path).Where(IsNotebook).Order(StringComparer.Ordinal).Select(f => new FileInfo(f));
        if (File.Exists(path) && IsNotebook(path)) return [new FileInfo(path)];
        throw new ArgumentException($"'{path}' is neither a notebook (.ipynb, .dib) nor a folder of notebooks.");
    }

    static bool IsNotebook(string path) => path.EndsWith(".ipynb", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".dib", StringComparison.OrdinalIgnoreCase);

    /// <summary>The folder holding Interactive.sln, looking up from the current directory, then from this program.</summary>
    public static string? RepositoryRoot()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Interactive.sln"))) return dir.FullName;
        return null;
    }
}

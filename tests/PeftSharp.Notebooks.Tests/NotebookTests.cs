using System.Diagnostics;
using System.Text.RegularExpressions;
using PeftSharp.Lab;
using Xunit.Abstractions;

// The runner sets the process's current directory per notebook and kernels share formatters: one test at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace PeftSharp.Notebooks.Tests;

static class Repository
{
    public static string Root { get; } = FindRoot();

    public static string Notebooks => Path.Combine(Root, "notebooks");

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Interactive.sln"))) return dir.FullName;
        throw new InvalidOperationException("Interactive.sln not found above " + AppContext.BaseDirectory);
    }

    public static string NewTempDirectory()
    {
        var path = Path.Combine(Path.GetTempPath(), "peftsharp-notebook-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>Runs the Lab's command line in this process, returning the exit code and what it printed.</summary>
    public static async Task<(int Code, string Out, string Error)> Lab(params string[] args)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        // Not disposed: a timed-out cell left running may later restore these as the console.
        var output = new StringWriter();
        var error = new StringWriter();
        Console.SetOut(output);
        Console.SetError(error);
        try
        {
            int code = await Cli.RunAsync(args);
            return (code, output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }
}

/// <summary>Every notebook under notebooks/ runs cleanly with the runner the README's main command uses.</summary>
public sealed class NotebookTests(ITestOutputHelper output)
{
    public static TheoryData<string> Notebooks()
    {
        var data = new TheoryData<string>();
        foreach (var file in Directory.EnumerateFiles(Repository.Notebooks).Where(f => f.EndsWith(".ipynb") || f.EndsWith(".dib")).Order())
            data.Add(Path.GetFileName(file));
        return data;
    }

    [Theory, MemberData(nameof(Notebooks))]
    public async Task Notebook_runs_without_error_and_its_report_renders_offline(string notebook)
    {
        var outDir = Repository.NewTempDirectory();
        var clock = Stopwatch.StartNew();
        var (code, stdout, stderr) = await Repository.Lab("run", "notebooks", Path.Combine(Repository.Notebooks, notebook), "--out", outDir);
        output.WriteLine(stdout);
        output.WriteLine($"{notebook}: {clock.Elapsed.TotalSeconds:0.0} s");
        Assert.True(code == 0, $"{notebook} failed:\n{stderr}\n{stdout}");
        // No time assertion (speed is for benchmarks, not tests): the runner's per-cell timeout stops a hung cell, and the
        // time is in the test output and the report.

        var executed = File.ReadAllText(Path.Combine(outDir, Path.ChangeExtension(notebook, ".ipynb")));
        Assert.Contains("PeftSharp 0.1.0 loaded", executed);
        var report = File.ReadAllText(Path.Combine(outDir, "report.html"));
        Assert.Single(Regex.Matches(report, @"\* plotly\.js v\d"));                 // plotly.js once, inline
        Assert.Contains("class=\"peftsharp-chart\"", report);
        Assert.DoesNotContain("<script src=", report);                              // nothing fetched by the page itself
    }

    [Fact]
    public void Notebooks_are_numbered_have_markdown_before_every_code_cell_no_outputs_and_find_the_repository_first()
    {
        foreach (var file in Directory.EnumerateFiles(Repository.Notebooks, "*.ipynb"))
        {
            var name = Path.GetFileName(file);
            Assert.Matches(@"^\d\d-[a-z0-9-]+\.ipynb$", name);
            using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(file));
            var cells = json.RootElement.GetProperty("cells").EnumerateArray().ToList();
            for (int i = 0; i < cells.Count; i++)
            {
                if (cells[i].GetProperty("cell_type").GetString() != "code") continue;
                Assert.True(i > 0 && cells[i - 1].GetProperty("cell_type").GetString() == "markdown", $"{name}: code cell {i} has no markdown before it.");
                Assert.Equal(0, cells[i].GetProperty("outputs").GetArrayLength());
            }
            Assert.Contains(name, File.ReadAllText(Path.Combine(Repository.Notebooks, "README.md")));
            // Every client starts the kernel in another folder: the first code cell finds the repository before any relative path.
            var first = string.Concat(cells.First(c => c.GetProperty("cell_type").GetString() == "code").GetProperty("source").EnumerateArray().Select(l => l.GetString()));
            Assert.True(first.Contains("Interactive.sln") && first.Contains("SetCurrentDirectory"), $"{name}: the first code cell must find the repository from wherever the kernel started (copy 00-quickstart's).");
        }
    }

    [Fact]
    public async Task A_broken_cell_fails_the_run_naming_the_notebook_the_cell_and_the_error()
    {
        var dir = Repository.NewTempDirectory();
        var notebook = Path.Combine(dir, "broken.dib");
        File.WriteAllText(notebook, """
            #!csharp

            var ok = 1 + 1;

            #!csharp

            throw new InvalidOperationException("boom in cell two");

            #!csharp

            var never = 3;
            """);
        var (code, stdout, stderr) = await Repository.Lab("run", "notebooks", notebook, "--out", Path.Combine(dir, "out"));
        Assert.Equal(1, code);
        Assert.Contains("broken.dib, cell 2 (`throw new InvalidOperationException(\"boom in cell two\");`)", stderr);
        Assert.Contains("boom in cell two", stderr);
        Assert.DoesNotContain("cell  3/3", stdout);
        Assert.True(File.Exists(Path.Combine(dir, "out", "broken.ipynb")));
        Assert.Contains("boom in cell two", File.ReadAllText(Path.Combine(dir, "out", "report.html")));
    }

    [Fact]
    public async Task Run_notebooks_full_gives_the_kernel_the_full_setting_and_says_so()
    {
        var dir = Repository.NewTempDirectory();
        var notebook = Path.Combine(dir, "setting.dib");
        File.WriteAllText(notebook, "#!csharp\n\nConsole.WriteLine($\"setting: [{Environment.GetEnvironmentVariable(\"PEFTSHARP_FULL\")}]\");\n");
        var (code, stdout, stderr) = await Repository.Lab("run", "notebooks", notebook, "--out", Path.Combine(dir, "out"), "--full");
        Assert.True(code == 0, stderr);
        Assert.Contains("full setting", stdout);
        Assert.Contains("setting: [1]", File.ReadAllText(Path.Combine(dir, "out", "setting.ipynb")));
        Assert.Null(Environment.GetEnvironmentVariable("PEFTSHARP_FULL"));   // put back: later notebooks here run quick
    }

    [Fact]
    public async Task A_cell_past_the_time_limit_fails_with_a_timeout()
    {
        var dir = Repository.NewTempDirectory();
        var notebook = Path.Combine(dir, "slow.dib");
        File.WriteAllText(notebook, "#!csharp\n\nawait Task.Delay(10_000);\n");
        var clock = Stopwatch.StartNew();
        var (code, _, stderr) = await Repository.Lab("run", "notebooks", notebook, "--out", Path.Combine(dir, "out"), "--timeout", "2");
        Assert.Equal(1, code);
        Assert.Contains("slow.dib, cell 1", stderr);
        Assert.Contains("timed out after 2 s", stderr);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(25));
    }

    [Fact]
    public async Task A_missing_notebook_is_an_error_naming_the_path()
    {
        var (code, _, stderr) = await Repository.Lab("run", "notebooks", "/nonexistent/x.ipynb");
        Assert.Equal(1, code);
        Assert.Contains("/nonexistent/x.ipynb", stderr);
    }

    [Fact]
    public async Task An_unknown_option_is_refused_and_help_runs_nothing()
    {
        var (code, _, stderr) = await Repository.Lab("run", "notebooks", "--tiemout", "5");
        Assert.Equal(2, code);
        Assert.Contains("Unknown option '--tiemout'", stderr);
        var (helpCode, help, _) = await Repository.Lab("run", "notebooks", "--help");
        Assert.Equal(0, helpCode);
        Assert.Contains("usage:", help);
        Assert.DoesNotContain("notebooks:", help);                           // it printed usage instead of running
    }

    [Fact]
    public void Every_option_the_usage_names_is_one_the_command_line_accepts()
    {
        var named = System.Text.RegularExpressions.Regex.Matches(PeftSharp.Lab.Cli.Usage, @"--([a-z][a-z-]*)").Select(m => m.Groups[1].Value).Distinct().ToList();
        Assert.Contains("lora-dropout", named);
        Assert.All(named, name => Assert.Empty(PeftSharp.Lab.Arguments.Parse([$"--{name}", "1"]).UnknownOptions));
    }
}

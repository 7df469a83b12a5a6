using System.Diagnostics;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.Documents;
using Microsoft.DotNet.Interactive.Documents.Jupyter;
using Microsoft.DotNet.Interactive.Events;
using DocumentKernelInfo = Microsoft.DotNet.Interactive.Documents.KernelInfo;

namespace PeftSharp.Lab.Notebooks;

/// <summary>How one cell went.</summary>
sealed record CellResult(int Number, string FirstLine, TimeSpan Duration, bool Succeeded, string? Error, bool TimedOut = false, string? ExpectedError = null);

/// <summary>How one notebook went: every cell run (up to the first failure), the executed document and the timings.</summary>
sealed record NotebookResult(string Path, string? OutputPath, InteractiveDocument? Executed, IReadOnlyList<CellResult> Cells, int CodeCells,
                             TimeSpan KernelStart, TimeSpan Duration, string? Error = null)
{
    public bool Succeeded => Error is null && Cells.All(c => c.Succeeded) && Cells.Count == CodeCells;

    public CellResult? Failure => Cells.FirstOrDefault(c => !c.Succeeded);

    /// <summary>Where and why it failed, e.g. "notebooks/00-quickstart.ipynb, cell 5 (`peft.Merge();`): ...".</summary>
    public string? FailureText => Error is not null ? $"{Path}: {Error}"
        : Failure is { } f ? $"{Path}, cell {f.Number} (`{f.FirstLine}`): {f.Error}" : null;
}

/// <summary>
/// Executes .ipynb and .dib notebooks cell by cell on a fresh in-process .NET Interactive kernel each (the C# kernel
/// VS Code and Jupyter use, with NuGet references and package extensions), with the notebook's folder as the current
/// directory (as VS Code does), a time limit per cell, and the first failing cell ending the notebook.
/// </summary>
sealed class NotebookRunner(TimeSpan cellTimeout, string outputDirectory, TextWriter log)
{
    static readonly KernelInfoCollection KernelInfos = new()
    {
        new DocumentKernelInfo("csharp", "C#", ["c#", "cs"]),
        new DocumentKernelInfo("fsharp", "F#", ["f#", "fs"]),
        new DocumentKernelInfo("pwsh", "PowerShell", ["powershell"]),
        new DocumentKernelInfo("markdown", "Markdown", ["md"]),
        new DocumentKernelInfo("value", "value"),
    };

    static NotebookRunner() => KernelInfos.DefaultKernelName = "csharp";

    public async Task<NotebookResult> RunAsync(FileInfo notebook, string displayPath)
    {
        var clock = Stopwatch.StartNew();
        InteractiveDocument document;
        try
        {
            document = await InteractiveDocument.LoadAsync(notebook, KernelInfos);
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException or InvalidOperationException or ArgumentException)
        {
            return new NotebookResult(displayPath, null, null, [], 0, TimeSpan.Zero, clock.Elapsed, $"cannot read the notebook: {e.Message}");
        }

        var codeCells = document.Elements.Where(IsCode).ToList();
        var results = new List<CellResult>();
        var previousDirectory = Environment.CurrentDirectory;
        var kernelClock = Stopwatch.StartNew();
        var kernel = NotebookKernel.Create();
        var kernelStart = kernelClock.Elapsed;
        log.WriteLine($"  kernel started in {kernelStart.TotalSeconds:0.0} s");
        bool abandoned = false;
        try
        {
            Environment.CurrentDirectory = notebook.DirectoryName!;
            for (int i = 0; i < codeCells.Count; i++)
            {
                var cell = codeCells[i];
                var result = await RunCellAsync(kernel, cell, i + 1);
                results.Add(result);
                log.WriteLine($"  cell {result.Number,2}/{codeCells.Count} {(result.ExpectedError is not null ? "failed as intended" : result.Succeeded ? "ok    " : result.TimedOut ? "TIMEOUT" : "FAILED")} {result.Duration.TotalSeconds,6:0.0} s  {result.FirstLine}");
                if (!result.Succeeded)
                {
                    log.WriteLine($"    {result.Error?.Replace("\n", "\n    ")}");
                    abandoned = result.TimedOut;
                    break;
                }
            }
        }
        finally
        {
            Environment.CurrentDirectory = previousDirectory;
            // A timed-out cell may still be running: leave that kernel alone rather than dispose it under the cell.
            if (!abandoned) kernel.Dispose();
            // The notebook's models and tensors are now unreachable, but their native memory goes back only when
            // their finalizers run; and a notebook that measured memory (ProcessMemory.ReturnFreedMemory) left glibc
            // paging in every large allocation, which slows every later notebook in this process by a third or more.
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            PeftSharp.Training.ProcessMemory.KeepFreedMemory();
        }

        Directory.CreateDirectory(outputDirectory);
        var outputPath = Path.Combine(outputDirectory, Path.GetFileNameWithoutExtension(notebook.Name) + ".ipynb");
        await using (var stream = File.Create(outputPath))
            Notebook.Write(document, stream, KernelInfos);
        return new NotebookResult(displayPath, outputPath, document, results, codeCells.Count, kernelStart, clock.Elapsed);
    }

    static bool IsCode(InteractiveDocumentElement e) =>
        e.KernelName is not ("markdown" or "md") && !string.IsNullOrWhiteSpace(e.Contents);

    async Task<CellResult> RunCellAsync(CompositeKernel kernel, InteractiveDocumentElement cell, int number)
    {
        var firstLine = cell.Contents.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0) ?? "";
        if (firstLine.Length > 70) firstLine = firstLine[..67] + "...";
        cell.Outputs.Clear();
        var outputs = new CellOutputs(cell);
        using var subscription = kernel.KernelEvents.Subscribe(new Observer(outputs.Add));
        var clock = Stopwatch.StartNew();
        var send = kernel.SendAsync(new SubmitCode(cell.Contents, cell.KernelName ?? "csharp"));
        var finished = await Task.WhenAny(send, Task.Delay(cellTimeout));
        if (finished != send)
        {
            var message = $"timed out after {cellTimeout.TotalSeconds:0} s (the limit per cell; raise it with --timeout SECONDS)";
            outputs.Add(message);
            return new CellResult(number, firstLine, clock.Elapsed, false, message, TimedOut: true);
        }
        KernelCommandResult result;
        try
        {
            result = await send;
        }
        catch (Exception e)
        {
            outputs.Add(e.Message);
            return new CellResult(number, firstLine, clock.Elapsed, false, $"{e.GetType().Name}: {e.Message}");
        }
        cell.ExecutionOrder = number;
        var failed = result.Events.OfType<CommandFailed>().FirstOrDefault();
        if (RaisesException(cell))
            return failed is not null
                ? new CellResult(number, firstLine, clock.Elapsed, true, null, ExpectedError: failed.Message)
                : new CellResult(number, firstLine, clock.Elapsed, false, $"the cell is tagged {RaisesExceptionTag} but ran without error");
        return new CellResult(number, firstLine, clock.Elapsed, failed is null, failed?.Message);
    }

    /// <summary>Jupyter's cell tag for a cell that is meant to fail (nbclient runs on past it); notebooks use it to show
    /// what a mistake looks like.</summary>
    public const string RaisesExceptionTag = "raises-exception";

    static bool RaisesException(InteractiveDocumentElement cell) =>
        cell.Metadata is { } metadata && metadata.TryGetValue("tags", out var tags) && tags switch
        {
            System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.Array } json => json.EnumerateArray().Any(t => t.ToString() == RaisesExceptionTag),
            IEnumerable<object> list => list.Any(t => t?.ToString() == RaisesExceptionTag),
            _ => false,
        };

    sealed class Observer(Action<KernelEvent> onNext) : IObserver<KernelEvent>
    {
        public void OnCompleted() { }
        public void OnError(Exception error) { }
        public void OnNext(KernelEvent value) => onNext(value);
    }

    /// <summary>Turns kernel events into the cell's outputs as .ipynb stores them; an updated display replaces its first form.</summary>
    sealed class CellOutputs(InteractiveDocumentElement cell)
    {
        readonly Dictionary<string, DisplayElement> _displays = [];
        readonly object _gate = new();

        public void Add(string error)
        {
            lock (_gate) cell.Outputs.Add(new ErrorElement(error, "Error"));
        }

        public void Add(KernelEvent e)
        {
            lock (_gate)
            {
                switch (e)
                {
                    case StandardOutputValueProduced stdout:
                        cell.Outputs.Add(new TextElement(Text(stdout), "stdout"));
                        break;
                    case StandardErrorValueProduced stderr:
                        cell.Outputs.Add(new TextElement(Text(stderr), "stderr"));
                        break;
                    case ReturnValueProduced value:
                        var element = new ReturnValueElement();
                        foreach (var f in value.FormattedValues) element.Data[f.MimeType] = f.Value;
                        cell.Outputs.Add(element);
                        break;
                    case DisplayedValueUpdated updated when updated.ValueId is { } id && _displays.TryGetValue(id, out var shown):
                        shown.Data.Clear();
                        foreach (var f in updated.FormattedValues) shown.Data[f.MimeType] = f.Value;
                        break;
                    case ErrorProduced error:
                        cell.Outputs.Add(new TextElement(error.Message, "stderr"));
                        break;
                    case DisplayEvent display:
                        var data = display.FormattedValues.ToDictionary(f => f.MimeType, f => (object)f.Value);
                        var displayElement = new DisplayElement(data);
                        if (display is DisplayedValueProduced { ValueId: { } valueId }) _displays[valueId] = displayElement;
                        cell.Outputs.Add(displayElement);
                        break;
                    case CommandFailed failed when !cell.Outputs.OfType<ErrorElement>().Any():
                        cell.Outputs.Add(new ErrorElement(failed.Message, "Error"));
                        break;
                }
            }
        }

        static string Text(DisplayEvent e) => e.FormattedValues.FirstOrDefault(f => f.MimeType == "text/plain")?.Value ?? "";
    }
}

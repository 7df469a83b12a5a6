using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.CSharp;
using Microsoft.DotNet.Interactive.Events;
using PeftSharp.Adapters;
using PeftSharp.Interactive;

// Formatters are process-wide and torch shares one random generator: one test at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace PeftSharp.Interactive.Tests;

static class TestProcess
{
    // Before any test touches TorchSharp: the native fix and OpenMP threads that sleep rather than spin.
#pragma warning disable CA2255
    [System.Runtime.CompilerServices.ModuleInitializer]
#pragma warning restore CA2255
    internal static void Initialize() => PeftSharp.Native.TorchSharpNative.EnsureLoadable();
}

/// <summary>An in-process kernel as a notebook has it: a CompositeKernel with a C# kernel, the extension loaded.</summary>
sealed class TestKernel : IDisposable
{
    public CompositeKernel Root { get; }
    public CSharpKernel CSharp { get; }

    TestKernel(CompositeKernel root, CSharpKernel csharp)
    {
        Root = root;
        CSharp = csharp;
    }

    public static async Task<TestKernel> StartAsync()
    {
        var csharp = new CSharpKernel().UseKernelHelpers().UseValueSharing();
        // The script compiler sees only the assemblies handed to it (a notebook gets them from #r "nuget: ...").
        csharp.AddAssemblyReferences([typeof(PeftModel).Assembly.Location, typeof(TorchSharp.torch).Assembly.Location, typeof(PeftKernelExtension).Assembly.Location]);
        var root = new CompositeKernel { csharp };
        root.DefaultKernelName = csharp.Name;
        await new PeftKernelExtension().OnLoadAsync(root);
        var kernel = new TestKernel(root, csharp);
        await kernel.Ok("""
            using PeftSharp.Adapters; using PeftSharp.Models; using PeftSharp.Analysis; using PeftSharp.Interactive; using PeftSharp.Training;
            using TorchSharp; using static TorchSharp.torch;
            """);
        return kernel;
    }

    public async Task<IReadOnlyList<KernelEvent>> Submit(string code)
    {
        var result = await Root.SendAsync(new SubmitCode(code));
        return result.Events;
    }

    /// <summary>Runs <paramref name="code"/>, asserts it did not fail, and returns the HTML it displayed.</summary>
    public async Task<string> Ok(string code)
    {
        var events = await Submit(code);
        var failed = events.OfType<CommandFailed>().FirstOrDefault();
        Assert.True(failed is null, $"'{code}' failed: {failed?.Message}");
        return Html(events);
    }

    /// <summary>Runs <paramref name="code"/>, asserts it failed, and returns the message.</summary>
    public async Task<string> Fails(string code)
    {
        var events = await Submit(code);
        var failed = events.OfType<CommandFailed>().FirstOrDefault();
        Assert.True(failed is not null, $"'{code}' was expected to fail but did not.");
        return failed!.Message;
    }

    /// <summary>The HTML the events displayed, with entities decoded (so tests can look for plain text).</summary>
    public static string Html(IEnumerable<KernelEvent> events) => System.Net.WebUtility.HtmlDecode(string.Join("\n", events.OfType<DisplayEvent>()
        .SelectMany(e => e.FormattedValues).Where(v => v.MimeType == "text/html").Select(v => v.Value)));

    public T Value<T>(string name)
    {
        Assert.True(CSharp.TryGetValue<T>(name, out var value), $"no variable {name}");
        return value;
    }

    public void Dispose() => Root.Dispose();
}

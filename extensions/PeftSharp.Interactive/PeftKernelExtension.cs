using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.Loader;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.CSharp;
using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Native;

namespace PeftSharp.Interactive;

/// <summary>
/// The extension .NET Interactive loads from <c>interactive-extensions/dotnet</c> after <c>#r "nuget: PeftSharp.Interactive"</c>.
/// It first makes the process able to run what follows: FSharp.Core requests answered by the loaded FSharp.Core
/// (Plotly.NET 6 asks for 10.1, the dotnet-interactive tool ships 10.0) and TorchSharp's native library patched where
/// the system's libstdc++ is older than it asks for. Then it registers the formatters and <c>#!peft</c>.
/// </summary>
public sealed class PeftKernelExtension : IKernelExtension
{
    public Task OnLoadAsync(Kernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        FSharpCoreRedirect.Install();         // before any Plotly.NET type is touched
        TorchSharpNative.EnsureLoadable();     // before TorchSharp initialises in this process
        return Loader.LoadAsync(kernel);
    }

    // Kept apart so that nothing referring to Plotly.NET is compiled before the redirect is in place.
    static class Loader
    {
        [MethodImpl(MethodImplOptions.NoInlining)]
        public static Task LoadAsync(Kernel kernel)
        {
            Formatters.Register();
            var csharp = CSharpKernels(kernel).ToList();
            foreach (var k in csharp) PeftMagicCommands.Register(k);
            if (KernelInvocationContext.Current is { } context)
                // plotly.js rides along with this message, once per kernel: every chart after it draws with no network.
                KernelInvocationContextExtensions.Display(context, new PeftHtml(LoadedMessage(csharp.Count) + ChartHtml.PlotlyLoader()), HtmlFormatter.MimeType);
            return Task.CompletedTask;
        }

        static IEnumerable<CSharpKernel> CSharpKernels(Kernel kernel) => kernel switch
        {
            CSharpKernel csharp => [csharp],
            CompositeKernel composite => composite.ChildKernels.OfType<CSharpKernel>(),
            _ => [],
        };
    }

    /// <summary>The one line shown on load.</summary>
    public static string LoadedMessage(int kernels) =>
        $"<div class=\"peftsharp-loaded\">PeftSharp {Version} loaded: <code>#!peft</code> ({string.Join(", ", PeftMagicCommands.Subcommands)})" +
        (kernels == 0 ? " (no C# kernel found, so no magic commands)" : "") +
        ", views for PeftModel, ParameterReport, TrainingLog, spectra, ranks and routing, and <code>LiveTrainingView.Show(trainer)</code>.</div>";

    static string Version => typeof(PeftKernelExtension).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "?";
}

/// <summary>
/// Answers a request for a newer FSharp.Core than the process has with the FSharp.Core already loaded. Plotly.NET 6
/// is built against FSharp.Core 10.1 and uses nothing that 10.0 lacks; hosts that ship 10.0 (the dotnet-interactive and
/// dotnet-repl tools) otherwise fail with FileNotFoundException on the first chart.
/// </summary>
public static class FSharpCoreRedirect
{
    static int _installed;

    public static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) == 1) return;
        AssemblyLoadContext.Default.Resolving += (context, name) =>
            name.Name == "FSharp.Core"
                ? AppDomain.CurrentDomain.GetAssemblies().FirstOrDefault(a => a.GetName().Name == "FSharp.Core")
                : null;
    }
}

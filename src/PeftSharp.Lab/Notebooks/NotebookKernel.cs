using System.Collections.Concurrent;
using System.Reactive.Linq;
using System.Reflection;
using System.Runtime.Loader;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.CSharp;
using Microsoft.DotNet.Interactive.Events;
using Microsoft.DotNet.Interactive.PackageManagement;

namespace PeftSharp.Lab.Notebooks;

/// <summary>
/// A .NET Interactive kernel set up as the dotnet-interactive tool sets up its C# kernel for VS Code and Jupyter:
/// <c>#r "nuget: ..."</c>, <c>#i</c>, <c>#!who</c>, value sharing, and extensions loaded from the
/// <c>interactive-extensions/dotnet</c> folder of every package a cell adds (the tool does this internally; a host has
/// to do it itself).
/// </summary>
static class NotebookKernel
{
    public static CompositeKernel Create()
    {
        var csharp = new CSharpKernel()
            .UseNugetDirective((kernel, references) =>
            {
                kernel.AddAssemblyReferences(references.SelectMany(r => r.AssemblyPaths));
                return Task.CompletedTask;
            })
            .UseKernelHelpers()
            .UseValueSharing();
        var root = new CompositeKernel { csharp };
        root.DefaultKernelName = csharp.Name;
        root.UseWho();
        UseExtensionsFromPackages(root);
        return root;
    }

    static void UseExtensionsFromPackages(CompositeKernel root)
    {
        var added = new ConcurrentQueue<PackageAdded>();
        var loaded = new HashSet<string>(StringComparer.Ordinal);
        root.RegisterForDisposal(root.KernelEvents.OfType<PackageAdded>().Subscribe(added.Enqueue));
        root.AddMiddleware(async (command, context, next) =>
        {
            await next(command, context);
            while (added.TryDequeue(out var package))
            {
                if (package.PackageReference.PackageRoot is not { } packageRoot) continue;
                var folder = new DirectoryInfo(Path.Combine(packageRoot, "interactive-extensions", "dotnet"));
                if (!folder.Exists || !loaded.Add(folder.FullName)) continue;
                await LoadExtensionsAsync(folder, root, context);
            }
        });
    }

    static async Task LoadExtensionsAsync(DirectoryInfo folder, Kernel kernel, KernelInvocationContext context)
    {
        foreach (var dll in folder.GetFiles("*.dll"))
        {
            var assembly = LoadOnce(dll.FullName);
            foreach (var type in assembly.ExportedTypes.Where(t => t is { IsClass: true, IsAbstract: false } && typeof(IKernelExtension).IsAssignableFrom(t)))
            {
                var extension = (IKernelExtension)Activator.CreateInstance(type)!;
                try
                {
                    await extension.OnLoadAsync(kernel);
                    context.Publish(new KernelExtensionLoaded(extension, context.Command));
                }
                catch (Exception e)
                {
                    context.Fail(context.Command, e, $"Failed to load kernel extension \"{type.Name}\" from {dll.FullName}: {e.Message}");
                }
            }
        }
        var script = new FileInfo(Path.Combine(folder.FullName, "extension.dib"));
        if (script.Exists) await kernel.LoadAndRunInteractiveDocument(script, context.Command);
    }

    // An assembly of that name may already be loaded (this process references the same library): use it.
    static Assembly LoadOnce(string path)
    {
        var name = AssemblyName.GetAssemblyName(path).Name;
        return AppDomain.CurrentDomain.GetAssemblies().FirstOrDefault(a => a.GetName().Name == name)
            ?? AssemblyLoadContext.Default.LoadFromAssemblyPath(path);
    }
}

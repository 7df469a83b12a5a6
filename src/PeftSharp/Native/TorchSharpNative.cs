using System.Runtime.InteropServices;

namespace PeftSharp.Native;

/// <summary>
/// Makes TorchSharp's native library loadable in processes that did not go through this repository's build
/// (notebooks loading TorchSharp with <c>#r "nuget: ..."</c> use the copies in the NuGet cache). Call
/// <see cref="EnsureLoadable"/> before the first TorchSharp call in the process: once TorchSharp has failed to
/// initialise it stays broken until the process restarts. Does nothing where no fix is needed.
/// </summary>
public static class TorchSharpNative
{
    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    static readonly object Gate = new();
    static bool _done;

    /// <summary>Paths patched (or found already patched) by the last call; empty when no fix was needed.</summary>
    public static IReadOnlyList<string> PatchedFiles { get; private set; } = Array.Empty<string>();

    /// <summary>
    /// Patches every copy of libLibTorchSharp.so that TorchSharp may load: next to TorchSharp.dll, in its
    /// <c>cpu/</c> folder (TorchSharp copies natives there on first use from a NuGet cache), and in the package's
    /// <c>runtimes/linux-x64/native</c> folder; where TorchSharp was loaded from a NuGet cache, loads libtorch from its
    /// package by full path (<see cref="PreloadLibTorchChain"/>) so that a system libtorch cannot take its place. Also asks
    /// libtorch's OpenMP threads to sleep rather than spin between operations (<see cref="PreferSleepingThreads"/>) and MKL
    /// for the same sums on every run (<see cref="PreferReproducibleMath"/>). Safe to call many times and from several threads.
    /// </summary>
    public static void EnsureLoadable()
    {
        lock (Gate)
        {
            if (_done) return;
            _done = true;
            PreferSleepingThreads();
            PreferReproducibleMath();
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return;
            if (ElfVersionNeedPatcher.SystemLibStdCxxLacks(ElfVersionNeedPatcher.TorchSharpMissingVersion)) PatchLibTorchSharp();
            PreloadLibTorchChain();   // after the patch: LibTorchSharp is loaded from a patched file
        }
    }

    static void PatchLibTorchSharp()
    {
        var patched = new List<string>();
        foreach (var path in CandidatePaths().Distinct())
        {
            if (!File.Exists(path)) continue;
            try
            {
                ElfVersionNeedPatcher.MarkVersionNeedWeak(path, ElfVersionNeedPatcher.TorchSharpMissingVersion);
                patched.Add(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new InvalidOperationException(
                    $"TorchSharp's native library at {path} needs {ElfVersionNeedPatcher.TorchSharpMissingVersion}, " +
                    $"which this system's libstdc++ lacks, and it could not be patched ({e.Message}). " +
                    "Make the file writable, or install a libstdc++ from GCC 13 or later.", e);
            }
        }
        PatchedFiles = patched;
    }

    /// <summary>The libtorch package TorchSharp 0.107 was built against (Directory.Packages.props names the same; a test
    /// checks they agree).</summary>
    public const string LibTorchVersion = "2.10.0";

    /// <summary>Native libraries loaded by full path by the last <see cref="EnsureLoadable"/> (empty when the host finds them
    /// itself).</summary>
    public static IReadOnlyList<string> PreloadedFiles { get; private set; } = Array.Empty<string>();

    /// <summary>
    /// Loads libtorch from the <c>libtorch-cpu-linux-x64</c> package before TorchSharp looks for it by name, when TorchSharp.dll
    /// was loaded from a NuGet package folder (notebook kernels, scripts) rather than from an application folder whose
    /// deps.json puts the natives on the search path. TorchSharp first tries <c>NativeLibrary.TryLoad("torch_cpu")</c>, which
    /// in such hosts falls through to dlopen and the system's library cache: with Debian's python3-torch or libtorch-dev
    /// installed it loads libtorch 1.13's <c>libtorch_cpu.so</c>, LibTorchSharp then fails to bind against it, and every
    /// TorchSharp call in the process fails. Loading the package's chain by full path in dependency order (OpenMP, c10,
    /// torch_cpu, torch, then LibTorchSharp; each finds the ones before it by soname) makes those later lookups by name
    /// find the right libraries. Loading only torch_cpu is not enough (LibTorchSharp's libtorch.so would still come from the
    /// system, and the mix crashed the process). Does nothing when the host already has libtorch on its search path or loaded.
    /// </summary>
    static void PreloadLibTorchChain()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return;
        var torchSharpDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location);
        if (string.IsNullOrEmpty(torchSharpDir) || HostHasLibTorch(torchSharpDir)) return;
        // NuGet cache layout: <packages>/torchsharp/<version>/lib/net8.0/TorchSharp.dll.
        var torchSharpPackage = Path.GetFullPath(Path.Combine(torchSharpDir, "..", ".."));
        var packages = Path.GetFullPath(Path.Combine(torchSharpPackage, "..", ".."));
        var natives = Path.Combine(packages, "libtorch-cpu-linux-x64", LibTorchVersion, "runtimes", "linux-x64", "native");
        var libTorchSharp = Path.Combine(torchSharpPackage, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!Directory.Exists(natives) || !File.Exists(libTorchSharp)) return;   // not a NuGet layout: TorchSharp's own search applies

        var loaded = LoadedLibraries();
        if (loaded.FirstOrDefault(l => Path.GetFileName(l) is "libtorch_cpu.so" or "libLibTorchSharp.so") is { } already)
        {
            // Too late to choose: a second libtorch in one process aborts. Only a wrong one is worth a word.
            if (!already.StartsWith(natives, StringComparison.Ordinal) && !already.StartsWith(torchSharpPackage, StringComparison.Ordinal)
                && Path.GetFileName(already) == "libtorch_cpu.so" && !loaded.Any(l => Path.GetFileName(l) == "libLibTorchSharp.so"))
                throw new InvalidOperationException(
                    $"This process already loaded {already}, not the libtorch {LibTorchVersion} TorchSharp needs ({natives}), so TorchSharp cannot work " +
                    "in it. Restart the kernel and load PeftSharp (or call TorchSharpNative.EnsureLoadable()) before anything touches TorchSharp.");
            return;
        }

        var chain = Directory.GetFiles(natives, "libgomp*.so*").Order(StringComparer.Ordinal)
            .Concat(new[] { "libc10.so", "libtorch_cpu.so", "libtorch.so" }.Select(f => Path.Combine(natives, f)))
            .Append(libTorchSharp).ToList();
        foreach (var library in chain)
        {
            try
            {
                NativeLibrary.Load(library);
            }
            catch (DllNotFoundException e)
            {
                throw new InvalidOperationException(
                    $"TorchSharp's native library chain could not be loaded from the NuGet cache: {library} failed ({e.Message.Trim()}). " +
                    $"Start the kernel with LD_LIBRARY_PATH={natives} so libtorch {LibTorchVersion} is found first, or restore the " +
                    $"libtorch-cpu-linux-x64 {LibTorchVersion} package again (delete {Path.GetDirectoryName(Path.GetDirectoryName(natives))} and rerun the cell).", e);
            }
        }
        PreloadedFiles = chain;
    }

    // A host whose deps.json lists TorchSharp's natives passes their folder in NATIVE_DLL_SEARCH_DIRECTORIES; an app folder
    // may also hold them next to TorchSharp.dll. Either way TorchSharp's lookups by name find the right files.
    static bool HostHasLibTorch(string torchSharpDir)
    {
        var folders = (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") as string ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).Append(torchSharpDir);
        return folders.Any(f => File.Exists(Path.Combine(f, "libtorch_cpu.so")));
    }

    // The shared objects mapped into this process (/proc/self/maps), so a second libtorch is never loaded.
    static List<string> LoadedLibraries()
    {
        try
        {
            return File.ReadLines("/proc/self/maps").Select(l => l.IndexOf('/', StringComparison.Ordinal) is var i and >= 0 ? l[i..] : "")
                .Where(p => p.Contains(".so", StringComparison.Ordinal)).Distinct().ToList();
        }
        catch (IOException)
        {
            return [];
        }
    }

    /// <summary>
    /// Sets <c>OMP_WAIT_POLICY=PASSIVE</c> for libtorch's OpenMP pool unless the user chose a policy. Spinning threads
    /// (the default) stall every other process on a small machine: with test assemblies or a notebook kernel running
    /// side by side on 2 cores, a MiniLM step took 2.7x as long (measured: 1.9 s against 0.7 s per step). Takes effect
    /// only before libtorch loads; Linux and macOS only.
    /// </summary>
    public static void PreferSleepingThreads()
    {
        if (OperatingSystem.IsWindows() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null) return;
        SetEnv("OMP_WAIT_POLICY", "PASSIVE", 0);
        Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE");
    }

    /// <summary>
    /// Sets <c>MKL_CBWR=AUTO</c> (MKL's conditional numerical reproducibility) unless the user chose a mode. Without it
    /// the oneMKL inside libtorch picks its matrix-product code path per call, so the same product of the same numbers
    /// can round differently in the last bit from one call to the next, even on one thread (measured: a seeded rank-2
    /// LoRA on the multi-task MLP gave a different loss in the last place after 5-34 steps, every run). Training
    /// amplifies such bits: notebook 04's AdapterFusion run ended at 80% or 68% task accuracy in two runs of the same
    /// code in one process. With AUTO the same inputs give the same bits on every run with the same thread count, at
    /// no cost we could measure (3 interleaved pairs of processes, 2 threads: 60 LoRA steps on the tiny ViT 5.4 s with
    /// AUTO against 5.7 s without, twenty 1024² products 0.71 s against 0.68 s). Takes effect only before libtorch
    /// loads; does nothing on Windows.
    /// </summary>
    public static void PreferReproducibleMath()
    {
        if (OperatingSystem.IsWindows() || Environment.GetEnvironmentVariable(ReproducibilityVariable) is not null) return;
        SetEnv(ReproducibilityVariable, "AUTO", 0);
        Environment.SetEnvironmentVariable(ReproducibilityVariable, "AUTO");
    }

    /// <summary>MKL's environment variable for conditional numerical reproducibility.</summary>
    public const string ReproducibilityVariable = "MKL_CBWR";

    static IEnumerable<string> CandidatePaths()
    {
        const string lib = "libLibTorchSharp.so";
        // typeof(...).Assembly does not run TorchSharp's static constructor, so this is safe before any tensor.
        var torchSharpDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location);
        var folders = new List<string> { AppContext.BaseDirectory };
        if (!string.IsNullOrEmpty(torchSharpDir))
        {
            folders.Add(torchSharpDir);
            // NuGet cache layout: torchsharp/<version>/lib/net8.0/TorchSharp.dll and .../runtimes/linux-x64/native.
            var packageRoot = Path.GetFullPath(Path.Combine(torchSharpDir, "..", ".."));
            folders.Add(Path.Combine(packageRoot, "runtimes", "linux-x64", "native"));
        }
        foreach (var folder in folders)
        {
            yield return Path.Combine(folder, lib);
            yield return Path.Combine(folder, "cpu", lib);
            yield return Path.Combine(folder, "runtimes", "linux-x64", "native", lib);
        }
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace PeftSharp.Training;

/// <summary>
/// The process's resident memory and its peak, for comparing what training regimes cost. On Linux the peak can be reset
/// (<c>/proc/self/clear_refs</c>), so a run's peak is its own; elsewhere the peak is the process's since it started.
/// </summary>
public static class ProcessMemory
{
    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int param, int value);

    const int MallocTrimThreshold = -1, MallocMmapThreshold = -3;

    /// <summary>
    /// Makes glibc hand large blocks back to the system when they are freed, so resident memory follows the live
    /// tensors. Without it glibc raises its mmap threshold after the first big frees and keeps freed blocks, and a
    /// later run reuses them without the resident size growing, which hides its peak. Costs page faults on every large
    /// allocation; call it in benchmarks and comparisons, not for speed. Linux only; elsewhere it does nothing.
    /// </summary>
    public static void ReturnFreedMemory()
    {
        _mode = Mode.Returning;
        if (!OperatingSystem.IsLinux()) return;
        MallocTrim(0);   // what is free already: else the next allocations reuse it and the peak misses them
        Mallopt(MallocMmapThreshold, 256 * 1024);
        Mallopt(MallocTrimThreshold, 1024 * 1024);
    }

    /// <summary>
    /// Undoes <see cref="ReturnFreedMemory"/> for speed, and replaces glibc's own dynamic threshold: hands back what is
    /// free now (<c>malloc_trim</c>), then lets glibc keep freed blocks under 256 MiB for reuse and trim the heap only
    /// when 1 GiB lies free at its top. glibc's own threshold stops at 32 MiB, and a training step's large activations
    /// and gradients reach it (4,096 tokens × 2,048 features in float32 is exactly 32 MiB): each such block was then
    /// mapped afresh and paged in on every step. Measured with <c>bench lora</c> (d 512, FFN 2048, 32 × 128 tokens,
    /// 2 threads): the LoRA step took 83,153 minor page faults and 2.2 s with the 32 MiB threshold, 5,207 and 1.6 s with
    /// this one, and its ratio to the full fine-tuning step went from 0.94-1.10 to 0.75. The trim threshold was 512 MiB
    /// until a LoRA step with dropout 0.1 (whose temporaries free more than that at the end of each step) was measured:
    /// 69,707 faults and 2.8 s per step with 512 MiB, 20,559 and 2.2 s with 1 GiB. The cost is memory the process
    /// keeps between steps instead of returning. A process that called <see cref="ReturnFreedMemory"/> runs tensor code
    /// measurably slower (a 1024² matmul loop took 1.7 s instead of 1.2 s here) until this is called.
    /// <see cref="Trainer"/> calls it before training unless the process asked for <see cref="ReturnFreedMemory"/>.
    /// Linux only; elsewhere it does nothing.
    /// </summary>
    public static void KeepFreedMemory()
    {
        _mode = Mode.Keeping;
        if (!OperatingSystem.IsLinux()) return;
        MallocTrim(0);
        Mallopt(MallocMmapThreshold, 256 * 1024 * 1024);
        Mallopt(MallocTrimThreshold, 1024 * 1024 * 1024);
    }

    enum Mode { SystemDefault, Returning, Keeping }

    static Mode _mode;

    /// <summary>
    /// <see cref="KeepFreedMemory"/> unless the process chose already: a comparison that measures memory
    /// (<see cref="ReturnFreedMemory"/>) stays as it is, and a process that keeps freed memory is not trimmed again.
    /// What <see cref="Trainer.Fit{TBatch}(Adapters.PeftModel, Func{int, IReadOnlyList{TBatch}}, Func{TBatch, TorchSharp.torch.Tensor}, TrainerOptions, Func{IReadOnlyDictionary{string, double}}?, string?)"/>
    /// calls before its first step.
    /// </summary>
    public static void PreferReuseForTraining()
    {
        if (_mode == Mode.SystemDefault) KeepFreedMemory();
    }

    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    /// <summary>Starts a new peak: later <see cref="Peak"/> readings cover only what happens from here (Linux 4.0+).</summary>
    public static void ResetPeak()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Resident memory now, in bytes.</summary>
    public static long Resident() => OperatingSystem.IsLinux() ? Status("VmRSS") : Process.GetCurrentProcess().WorkingSet64;

    /// <summary>The largest resident memory since the last <see cref="ResetPeak"/>, in bytes.</summary>
    public static long Peak() => OperatingSystem.IsLinux() ? Status("VmHWM") : Process.GetCurrentProcess().PeakWorkingSet64;

    /// <summary>Minor page faults of the process so far (pages the kernel mapped in on first touch; 0 off Linux): a step
    /// whose count grows every time is paging its buffers in afresh.</summary>
    public static long MinorPageFaults()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        // /proc/self/stat: "pid (comm) state ppid ..." with minflt the 10th field; comm may hold spaces, so count after ')'.
        var stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[7], CultureInfo.InvariantCulture);
    }

    static long Status(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return 0;
    }
}

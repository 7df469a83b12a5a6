namespace PeftSharp.Training;

/// <summary>
/// The notebooks' quick / full switch. Every notebook has a settings cell whose numbers (seeds, steps, sizes) come from
/// <see cref="Pick{T}"/>: the quick setting is the default (what CI and <c>run notebooks</c> run, under 3 minutes on
/// 2 cores), the full one runs when the environment variable <c>PEFTSHARP_FULL=1</c> is set for the kernel (the Lab's
/// <c>run notebooks --full</c> sets it). One switch for the whole notebook, so a reader never edits numbers by hand to
/// reproduce the larger run.
/// </summary>
public static class RunSettings
{
    /// <summary>The environment variable that selects the full setting ("1" or "true").</summary>
    public const string FullVariable = "PEFTSHARP_FULL";

    /// <summary>True when <see cref="FullVariable"/> is "1" or "true" (any case); read on every call, so a host can set it
    /// before a notebook runs.</summary>
    public static bool Full => Environment.GetEnvironmentVariable(FullVariable)?.Trim().ToLowerInvariant() is "1" or "true";

    /// <summary>The default: the quick setting.</summary>
    public static bool Quick => !Full;

    /// <summary>The quick value or the full one, as the switch says.</summary>
    public static T Pick<T>(T quick, T full) => Full ? full : quick;

    /// <summary>One line for a settings cell's output: which setting runs and how to get the other.</summary>
    public static string Describe() => Full
        ? $"full setting ({FullVariable}=1)"
        : $"quick setting (set {FullVariable}=1 for the kernel, or run `run notebooks --full`, for the full one)";
}

using PeftSharp.Training;

namespace PeftSharp.Analysis;

/// <summary>
/// The training loss of one regime over several runs (seeds), step by step: the mean and the standard deviation across
/// the runs, so a chart can draw the mean as a line and mean ± std as a band. One seed's curve says little about
/// convergence speed; the band shows how much of a gap between two regimes is seed noise.
/// </summary>
/// <param name="Name">The regime, e.g. "LoRA r=4".</param>
/// <param name="Steps">The steps (1-based) every run reached.</param>
/// <param name="Mean">Mean loss over the runs at each step (after <see cref="Smoothing"/>).</param>
/// <param name="StandardDeviation">Sample standard deviation over the runs at each step (0 for one run).</param>
/// <param name="Runs">How many runs (seeds) the band averages.</param>
/// <param name="Smoothing">Each run's loss was first averaged over this many trailing steps (1: raw).</param>
/// <param name="RunMeanLosses">Each run's mean raw loss over <see cref="Steps"/> (the area under its curve per step):
/// one number per seed, for a paired comparison of convergence (<see cref="Claim"/>).</param>
public sealed record LossBand(string Name, IReadOnlyList<int> Steps, IReadOnlyList<double> Mean, IReadOnlyList<double> StandardDeviation,
                              int Runs, int Smoothing, IReadOnlyList<double> RunMeanLosses)
{
    /// <summary>
    /// The band of <paramref name="logs"/> (one per seed). Runs may differ in length; the band covers the steps all of
    /// them reached. <paramref name="smoothing"/> averages each run's loss over that many trailing steps first (a
    /// per-step training loss on small batches is noisy enough to hide a trend).
    /// </summary>
    public static LossBand Of(string name, IEnumerable<TrainingLog> logs, int smoothing = 1)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(logs);
        ArgumentOutOfRangeException.ThrowIfLessThan(smoothing, 1);
        var runs = logs.ToList();
        if (runs.Count == 0) throw new ArgumentException($"'{name}' has no training logs: give one per seed.", nameof(logs));
        int length = runs.Min(l => l.Steps.Count);
        if (length == 0) throw new ArgumentException($"A log of '{name}' has no steps.", nameof(logs));
        var curves = runs.Select(l => Smooth(l.Steps.Take(length).Select(s => s.Loss).ToArray(), smoothing)).ToList();
        var mean = new double[length];
        var std = new double[length];
        for (int i = 0; i < length; i++)
        {
            var at = curves.Select(c => c[i]).ToArray();
            mean[i] = SeedStatistics.Mean(at);
            std[i] = SeedStatistics.StandardDeviation(at);
        }
        return new LossBand(name, runs[0].Steps.Take(length).Select(s => s.Step).ToArray(), mean, std, runs.Count, smoothing,
            runs.Select(l => l.Steps.Take(length).Average(s => s.Loss)).ToArray());
    }

    /// <summary>The mean loss of the last step (of the smoothed curve).</summary>
    public double FinalMean => Mean[^1];

    static double[] Smooth(double[] values, int window)
    {
        var smoothed = new double[values.Length];
        double sum = 0;
        for (int i = 0; i < values.Length; i++)
        {
            sum += values[i];
            if (i >= window) sum -= values[i - window];
            smoothed[i] = sum / Math.Min(i + 1, window);
        }
        return smoothed;
    }
}

/// <summary>Loss bands of several regimes on one chart: the multi-run overlay ("LoRA, PiSSA, DoRA and full FT, mean ± std
/// over 3 seeds").</summary>
public sealed record LossCurves(string Title, IReadOnlyList<LossBand> Bands)
{
    /// <summary>One band per regime from harness runs, grouped by <see cref="RunResult.Name"/> in first-seen order.</summary>
    public static LossCurves FromRuns(string title, IEnumerable<RunResult> runs, int smoothing = 1)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var bands = runs.GroupBy(r => r.Name).Select(g => LossBand.Of(g.Key, g.Select(r => r.Log), smoothing)).ToList();
        if (bands.Count == 0) throw new ArgumentException("No runs to draw.", nameof(runs));
        return new LossCurves(title, bands);
    }

    /// <summary>The band named <paramref name="name"/>; throws listing the names when there is none.</summary>
    public LossBand this[string name] => Bands.FirstOrDefault(b => b.Name == name)
        ?? throw new KeyNotFoundException($"No band named '{name}'; the bands are {string.Join(", ", Bands.Select(b => $"'{b.Name}'"))}.");

    public override string ToString() =>
        $"{Title}: " + string.Join("; ", Bands.Select(b => $"{b.Name} final loss {b.FinalMean:0.####} ± {b.StandardDeviation[^1]:0.####} ({b.Runs} runs)"));
}

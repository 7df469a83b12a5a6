namespace PeftSharp.Analysis;

/// <summary>
/// The few statistics a multi-seed comparison needs, in one place so every table, chart and verdict computes them the
/// same way: the mean, the sample standard deviation (n - 1 in the denominator, the spread of one more run), and the
/// standard error of the mean (sd / √n, how well the mean itself is known).
/// </summary>
public static class SeedStatistics
{
    public static double Mean(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0) throw new ArgumentException("The mean of no values is undefined: run at least one seed.", nameof(values));
        return values.Average();
    }

    /// <summary>The sample standard deviation (n - 1); 0 for a single value, which has no measured spread (see
    /// <see cref="HasSpread"/>).</summary>
    public static double StandardDeviation(IReadOnlyList<double> values)
    {
        double mean = Mean(values);
        if (values.Count < 2) return 0;
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
    }

    /// <summary>The standard error of the mean, sd / √n (0 for a single value).</summary>
    public static double StandardError(IReadOnlyList<double> values) => StandardDeviation(values) / Math.Sqrt(values.Count);

    /// <summary>Whether the values can say anything about noise: two or more of them.</summary>
    public static bool HasSpread(IReadOnlyList<double> values) => values.Count >= 2;
}

namespace PeftSharp.Analysis;

/// <summary>
/// Where to cut a spectrum (singular values, largest first), for any method that picks a rank or a number of terms from
/// one: SVFit's energy rank, SoKA's number of Kronecker terms, the energy and elbow marks of the spectrum views.
/// </summary>
public static class SpectrumMarkers
{
    /// <summary>The smallest r whose top-r values hold at least <paramref name="threshold"/> of the energy:
    /// Σ_{i≤r} σ_i² / Σ_i σ_i² ≥ threshold (at least 1; 0 for an empty spectrum; r = n for an all-zero one).</summary>
    public static int EnergyRank(IReadOnlyList<double> values, double threshold)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (threshold is <= 0 or > 1 || double.IsNaN(threshold))
            throw new ArgumentOutOfRangeException(nameof(threshold), threshold, "An energy threshold is a fraction in (0, 1], e.g. 0.99.");
        CheckSpectrum(values);
        if (values.Count == 0) return 0;
        double total = values.Sum(v => v * v);
        if (total <= 0) return values.Count;
        double running = 0;
        for (int i = 0; i < values.Count; i++)
        {
            running += values[i] * values[i];
            if (running / total >= threshold - 1e-12) return i + 1;
        }
        return values.Count;
    }

    /// <summary>
    /// The number of values before the elbow of a decreasing spectrum: on the curve scaled to the unit square
    /// (x_i = i / (n − 1), y_i = (σ_i − σ_min) / (σ_max − σ_min)), the elbow is the point furthest below the chord from the
    /// first point to the last (Kneedle, Satopää et al. 2011, for a convex decreasing curve); the values before it are the
    /// ones that stand out. At least 1; n for fewer than 3 values or a flat spectrum (nothing stands out, keep all).
    /// </summary>
    public static int Elbow(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        CheckSpectrum(values);
        int n = values.Count;
        if (n < 3) return n;
        double max = values[0], min = values[^1];
        if (max - min <= 1e-12 * Math.Max(1, Math.Abs(max))) return n;
        int best = -1;
        double bestGap = 0;
        for (int i = 1; i < n - 1; i++)
        {
            double x = (double)i / (n - 1), y = (values[i] - min) / (max - min);
            double gap = 1 - x - y;                      // how far below the chord y = 1 − x
            if (gap > bestGap + 1e-15) (best, bestGap) = (i, gap);
        }
        return best < 0 ? n : Math.Max(1, best);
    }

    static void CheckSpectrum(IReadOnlyList<double> values)
    {
        for (int i = 0; i < values.Count; i++)
        {
            if (!double.IsFinite(values[i]) || values[i] < 0)
                throw new ArgumentException($"Spectrum value {i} is {values[i]}; singular values are finite and non-negative.", nameof(values));
            if (i > 0 && values[i] > values[i - 1] * (1 + 1e-9) + 1e-12)
                throw new ArgumentException($"The spectrum must be sorted largest first; value {i} ({values[i]:G4}) is above value {i - 1} ({values[i - 1]:G4}).", nameof(values));
        }
    }
}

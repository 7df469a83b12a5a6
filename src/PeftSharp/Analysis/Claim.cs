using System.Globalization;

namespace PeftSharp.Analysis;

/// <summary>How a claim fared against the results.</summary>
public enum ClaimOutcome
{
    /// <summary>The claimed direction is large against the noise.</summary>
    Held,

    /// <summary>The opposite direction is large against the noise.</summary>
    DidNotHold,

    /// <summary>Neither direction is large against the noise (or there were too few seeds to measure it).</summary>
    WithinNoise,
}

/// <summary>
/// A paper's claim as a testable statement: "<c>treatment</c> scores better than <c>baseline</c>" (or "no worse than it
/// by more than a margin"), checked on paired runs. The verdict is computed, never typed: for each seed the difference
/// d_i = treatment_i − baseline_i is taken (negated when lower is better, so d &gt; 0 always favours the claim), then
/// <list type="bullet">
/// <item>mean Δ = mean of the d_i and SE = sd(d) / √n, the standard error of the paired differences;</item>
/// <item><b>large</b> means more than <see cref="NoiseMultiple"/> = 2 standard errors away from the claim's threshold
/// −margin (about a 95% interval that excludes it);</item>
/// <item><see cref="ClaimOutcome.Held"/> when Δ − 2·SE &gt; −margin, <see cref="ClaimOutcome.DidNotHold"/> when
/// Δ + 2·SE &lt; −margin, and <see cref="ClaimOutcome.WithinNoise"/> otherwise, or with fewer than 2 seeds, which
/// cannot measure noise at all.</item>
/// </list>
/// So a direction is asserted only when it is large; a small gap is reported as within the noise. Pairing by seed
/// (same initialisation seed and batch order for both regimes) removes the noise the regimes share; the scores of the
/// two rows must therefore come from the same seeds in the same order.
/// </summary>
/// <param name="Statement">The claim in words, e.g. "PiSSA converges faster than LoRA".</param>
/// <param name="Source">Where it comes from, e.g. "Meng et al. 2024".</param>
public sealed record Claim(string Statement, string Source = "")
{
    /// <summary>How many standard errors make a difference large.</summary>
    public const double NoiseMultiple = 2.0;

    /// <summary>Checks the claim that <paramref name="treatment"/> beats (margin 0) or is no worse than (margin &gt; 0,
    /// in the metric's units) <paramref name="baseline"/>, row against row of <paramref name="comparison"/>.</summary>
    public ClaimVerdict Check(MethodComparison comparison, string treatment, string baseline, double margin = 0)
    {
        ArgumentNullException.ThrowIfNull(comparison);
        return Check(comparison[treatment], comparison[baseline], comparison.Metric, comparison.HigherIsBetter, margin);
    }

    /// <summary>Checks the claim on two rows (see <see cref="Check(string, IReadOnlyList{double}, string, IReadOnlyList{double}, string, bool, double)"/>);
    /// their seeds must match when both rows know them.</summary>
    public ClaimVerdict Check(ComparisonRow treatment, ComparisonRow baseline, string metric, bool higherIsBetter = true, double margin = 0)
    {
        ArgumentNullException.ThrowIfNull(treatment);
        ArgumentNullException.ThrowIfNull(baseline);
        if (treatment.SeedValues is { } a && baseline.SeedValues is { } b && !a.SequenceEqual(b))
            throw new ArgumentException($"'{treatment.Name}' ran seeds [{string.Join(", ", a)}] and '{baseline.Name}' seeds [{string.Join(", ", b)}]: " +
                                        "a paired check needs the same seeds for both.", nameof(baseline));
        return Check(treatment.Name, treatment.Scores, baseline.Name, baseline.Scores, metric, higherIsBetter, margin);
    }

    /// <summary>
    /// Checks the claim on paired per-seed values: <paramref name="treatmentScores"/>[i] and
    /// <paramref name="baselineScores"/>[i] come from seed i. <paramref name="higherIsBetter"/> orients the metric
    /// (false for a loss or perplexity); <paramref name="margin"/> ≥ 0 turns "better" into "no worse than by more than
    /// margin".
    /// </summary>
    public ClaimVerdict Check(string treatment, IReadOnlyList<double> treatmentScores, string baseline, IReadOnlyList<double> baselineScores,
                              string metric, bool higherIsBetter = true, double margin = 0)
    {
        ArgumentNullException.ThrowIfNull(treatmentScores);
        ArgumentNullException.ThrowIfNull(baselineScores);
        if (treatmentScores.Count != baselineScores.Count || treatmentScores.Count == 0)
            throw new ArgumentException($"A paired check needs one score per seed for both: '{treatment}' has {treatmentScores.Count}, '{baseline}' {baselineScores.Count}.", nameof(baselineScores));
        if (margin < 0 || !double.IsFinite(margin)) throw new ArgumentOutOfRangeException(nameof(margin), margin, "The margin is a finite number ≥ 0.");
        var differences = treatmentScores.Zip(baselineScores, (t, b) => higherIsBetter ? t - b : b - t).ToArray();
        double mean = SeedStatistics.Mean(differences), se = SeedStatistics.StandardError(differences);
        var outcome = differences.Length < 2 ? ClaimOutcome.WithinNoise
            : mean - NoiseMultiple * se > -margin ? ClaimOutcome.Held
            : mean + NoiseMultiple * se < -margin ? ClaimOutcome.DidNotHold
            : ClaimOutcome.WithinNoise;
        return new ClaimVerdict(this, outcome, treatment, baseline, metric, higherIsBetter, margin,
            treatmentScores.Zip(baselineScores, (t, b) => t - b).ToArray(), SeedStatistics.Mean(treatmentScores), SeedStatistics.Mean(baselineScores));
    }

    /// <summary>
    /// Checks "<paramref name="treatment"/> is more accurate than <paramref name="baseline"/>" (or no worse by more than
    /// <paramref name="margin"/>) from ONE training run of each, paired over the evaluation examples both were scored on:
    /// <paramref name="treatmentCorrect"/>[i] and <paramref name="baselineCorrect"/>[i] say whether each got example i
    /// right. d_i = correct_t − correct_b ∈ {−1, 0, 1}; mean Δ is the accuracy difference and SE = sd(d) / √n its standard
    /// error over the examples (the paired test McNemar's is built on), with the same 2-SE rule as the seeded check. This
    /// measures only the noise of the evaluation sample: the noise between training seeds is not in it, so the verdict
    /// says so (<see cref="ClaimVerdict.Unit"/>). For models too slow to train several times (MiniLM here).
    /// </summary>
    public ClaimVerdict CheckOnExamples(string treatment, IReadOnlyList<bool> treatmentCorrect, string baseline, IReadOnlyList<bool> baselineCorrect, double margin = 0)
    {
        ArgumentNullException.ThrowIfNull(treatmentCorrect);
        ArgumentNullException.ThrowIfNull(baselineCorrect);
        return CheckOnExamples(treatment, treatmentCorrect.Select(c => c ? 1.0 : 0.0).ToArray(), baseline, baselineCorrect.Select(c => c ? 1.0 : 0.0).ToArray(),
                               "accuracy", higherIsBetter: true, margin);
    }

    /// <summary>The paired check over evaluation examples for any per-example value (a loss per sentence, a 0/1
    /// correctness): value i of both lists belongs to example i; <paramref name="higherIsBetter"/> orients the metric.
    /// The means are the mean values (the accuracy for 0/1 values).</summary>
    public ClaimVerdict CheckOnExamples(string treatment, IReadOnlyList<double> treatmentValues, string baseline, IReadOnlyList<double> baselineValues,
                                        string metric, bool higherIsBetter = true, double margin = 0)
    {
        ArgumentNullException.ThrowIfNull(treatmentValues);
        ArgumentNullException.ThrowIfNull(baselineValues);
        if (treatmentValues.Count != baselineValues.Count || treatmentValues.Count < 2)
            throw new ArgumentException($"A paired check over examples needs the same evaluation examples (at least 2) for both: '{treatment}' has {treatmentValues.Count}, '{baseline}' {baselineValues.Count}.", nameof(baselineValues));
        if (margin < 0 || !double.IsFinite(margin)) throw new ArgumentOutOfRangeException(nameof(margin), margin, "The margin is a finite number ≥ 0.");
        var oriented = treatmentValues.Zip(baselineValues, (t, b) => higherIsBetter ? t - b : b - t).ToArray();
        double mean = SeedStatistics.Mean(oriented), se = SeedStatistics.StandardError(oriented);
        var outcome = mean - NoiseMultiple * se > -margin ? ClaimOutcome.Held
            : mean + NoiseMultiple * se < -margin ? ClaimOutcome.DidNotHold
            : ClaimOutcome.WithinNoise;
        return new ClaimVerdict(this, outcome, treatment, baseline, metric, higherIsBetter, margin,
            treatmentValues.Zip(baselineValues, (t, b) => t - b).ToArray(), SeedStatistics.Mean(treatmentValues), SeedStatistics.Mean(baselineValues))
        { Unit = ClaimUnit.EvaluationExample };
    }
}

/// <summary>What the paired differences of a <see cref="ClaimVerdict"/> run over.</summary>
public enum ClaimUnit
{
    /// <summary>One difference per training seed: the noise of training and evaluation together.</summary>
    Seed,

    /// <summary>One difference per evaluation example, from one training run of each regime: only the evaluation
    /// sample's noise.</summary>
    EvaluationExample,
}

/// <summary>
/// The computed verdict on a <see cref="Claim"/>: the outcome, the mean paired difference with its standard error, and
/// the number of seeds; <see cref="Summary"/> says it in one sentence ("held at this scale: Δ = x ± y over n seeds").
/// </summary>
/// <param name="Claim">The claim checked.</param>
/// <param name="Outcome">Held, did not hold, or within the noise (see <see cref="Analysis.Claim"/> for the rule).</param>
/// <param name="Treatment">The regime the claim is about.</param>
/// <param name="Baseline">The regime it is compared with.</param>
/// <param name="Metric">The metric's name.</param>
/// <param name="HigherIsBetter">The metric's direction.</param>
/// <param name="Margin">The tolerated shortfall (0: the claim is "better").</param>
/// <param name="Differences">Per-seed treatment − baseline, in the metric's own direction (not oriented).</param>
/// <param name="TreatmentMean">The treatment's mean score.</param>
/// <param name="BaselineMean">The baseline's mean score.</param>
public sealed record ClaimVerdict(Claim Claim, ClaimOutcome Outcome, string Treatment, string Baseline, string Metric, bool HigherIsBetter,
                                  double Margin, IReadOnlyList<double> Differences, double TreatmentMean, double BaselineMean)
{
    /// <summary>Mean of treatment − baseline over the seeds, in the metric's units.</summary>
    public double MeanDifference => SeedStatistics.Mean(Differences);

    /// <summary>Standard error of the paired differences, sd / √n (0 for one seed).</summary>
    public double StandardError => SeedStatistics.StandardError(Differences);

    public int Seeds => Differences.Count;

    /// <summary>What <see cref="Differences"/> run over: seeds (the default) or the evaluation examples of one run
    /// (<c>Claim.CheckOnExamples</c>).</summary>
    public ClaimUnit Unit { get; init; } = ClaimUnit.Seed;

    /// <summary>Whether the difference is large against the noise in either direction (the outcome is not
    /// <see cref="ClaimOutcome.WithinNoise"/>).</summary>
    public bool IsLarge => Outcome != ClaimOutcome.WithinNoise;

    /// <summary>One sentence: the outcome, Δ ± SE over n seeds, and the rule that decided it.</summary>
    public string Summary
    {
        get
        {
            var c = CultureInfo.InvariantCulture;
            string over = Unit == ClaimUnit.EvaluationExample
                ? $"over {Seeds:N0} evaluation examples paired, one training run each (the noise between training seeds is not measured)"
                : $"over {Seeds} seed{(Seeds == 1 ? "" : "s")}";
            string delta = string.Create(c, $"Δ {Metric} ({Treatment} − {Baseline}) = {MeanDifference:+0.####;-0.####;0} ± {StandardError:0.####} {over}");
            string threshold = Margin > 0 ? string.Create(c, $" of the threshold -{Margin:0.####} (the claim's margin)") : "";
            return Outcome switch
            {
                ClaimOutcome.Held => $"held at this scale: {delta} (more than {Claim.NoiseMultiple:0} standard errors {(Margin > 0 ? "above the threshold" : "in the claimed direction")}{(Margin > 0 ? string.Create(c, $" -{Margin:0.####}") : "")})",
                ClaimOutcome.DidNotHold => $"did not hold at this scale: {delta} (more than {Claim.NoiseMultiple:0} standard errors {(Margin > 0 ? "below the threshold" : "against the claim")}{(Margin > 0 ? string.Create(c, $" -{Margin:0.####}") : "")})",
                _ when Seeds < 2 && Unit == ClaimUnit.Seed => $"not decided: {delta}; one seed cannot tell a difference from noise",
                // Not "did not hold": the claim was not contradicted, only not shown; a reader must tell the two apart.
                _ => $"not shown at this scale: {delta} is within {Claim.NoiseMultiple:0} standard errors{(Margin > 0 ? threshold : " of zero")}, so neither direction is shown",
            };
        }
    }

    public override string ToString() => $"{Claim.Statement}{(Claim.Source.Length > 0 ? $" ({Claim.Source})" : "")}: {Summary}";
}

using PeftSharp.Training;

namespace PeftSharp.Analysis;

/// <summary>
/// One trained regime in a comparison: what it trained and what it scored, once per seed.
/// </summary>
/// <param name="Name">e.g. "LoRA r=8 (query, value)" or "full fine-tuning".</param>
/// <param name="TrainableParameters">Parameters that received gradients.</param>
/// <param name="AllParameters">Parameters of the whole model (for the share).</param>
/// <param name="Scores">The metric on held-out data (see <see cref="MethodComparison.Metric"/>), one per seed, in the
/// order of <see cref="SeedValues"/>; rows compared seed by seed (<see cref="Claim"/>) must list the same seeds in the
/// same order.</param>
/// <param name="TrainingTime">Mean wall time of training over the seeds (not of evaluation).</param>
/// <param name="PeakMemoryBytes">How far resident memory rose above its level at the start of training (the largest
/// over the seeds); null when it was not measured.</param>
public sealed record ComparisonRow(string Name, long TrainableParameters, long AllParameters, IReadOnlyList<double> Scores, TimeSpan TrainingTime, long? PeakMemoryBytes)
{
    /// <summary>A row of one run (one seed): what single-seed notebooks record.</summary>
    public ComparisonRow(string name, long trainableParameters, long allParameters, double score, TimeSpan trainingTime, long peakMemoryBytes)
        : this(name, trainableParameters, allParameters, [score], trainingTime, peakMemoryBytes) { }

    public IReadOnlyList<double> Scores { get; init; } = Scores is { Count: > 0 } && Scores.All(double.IsFinite)
        ? Scores : throw new ArgumentException($"Row '{Name}' needs at least one finite score (got [{string.Join(", ", Scores ?? [])}]).", nameof(Scores));

    /// <summary>The seeds behind <see cref="Scores"/>, when known (rows from <see cref="TrainingHarness{TModel, TBatch}"/> know them).</summary>
    public IReadOnlyList<int>? SeedValues { get; init; }

    public double TrainablePercent => AllParameters == 0 ? 0 : 100.0 * TrainableParameters / AllParameters;

    /// <summary>The mean score over the seeds (the score itself for one seed).</summary>
    public double Score => SeedStatistics.Mean(Scores);

    /// <summary>Number of seeds (runs) behind the row.</summary>
    public int Seeds => Scores.Count;

    /// <summary>Sample standard deviation of the scores over the seeds (0 for one seed): the error bar.</summary>
    public double StandardDeviation => SeedStatistics.StandardDeviation(Scores);

    /// <summary>Standard error of the mean score, sd / √n.</summary>
    public double StandardError => SeedStatistics.StandardError(Scores);

    /// <summary>The row from several runs of one regime (one per seed), in seed order.</summary>
    public static ComparisonRow FromRuns(IReadOnlyList<RunResult> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        if (runs.Count == 0) throw new ArgumentException("A row needs at least one run.", nameof(runs));
        if (runs.Select(r => r.Name).Distinct().Count() > 1)
            throw new ArgumentException($"The runs of one row share a name; got {string.Join(", ", runs.Select(r => $"'{r.Name}'").Distinct())}.", nameof(runs));
        var ordered = runs.OrderBy(r => r.Seed).ToList();
        if (ordered.Select(r => r.Seed).Distinct().Count() != ordered.Count)
            throw new ArgumentException($"'{runs[0].Name}' has two runs with the same seed: each seed counts once.", nameof(runs));
        return new ComparisonRow(runs[0].Name, runs[0].TrainableParameters, runs[0].AllParameters, ordered.Select(r => r.Score).ToArray(),
            TimeSpan.FromTicks((long)ordered.Average(r => r.TrainingTime.Ticks)), ordered.All(r => r.PeakMemoryBytes is not null) ? ordered.Max(r => r.PeakMemoryBytes) : null)
        { SeedValues = ordered.Select(r => r.Seed).ToArray() };
    }
}

/// <summary>
/// Regimes or methods trained on the same task, side by side: the record behind "accuracy against trainable parameters"
/// tables and charts, with each row's scores per seed (mean, standard deviation, error bars) and the size of the
/// evaluation set, so a reader can judge which gaps are noise. Rows keep the order they were added in.
/// </summary>
public sealed class MethodComparison(string title, string metric = "accuracy", bool higherIsBetter = true, int? evaluationExamples = null)
{
    readonly List<ComparisonRow> _rows = [];

    public string Title { get; } = title;

    /// <summary>The metric's name, e.g. "accuracy" or "perplexity".</summary>
    public string Metric { get; } = metric;

    public bool HigherIsBetter { get; } = higherIsBetter;

    /// <summary>How many held-out examples each score was measured on (null when not stated; runs from
    /// <see cref="TrainingHarness{TModel, TBatch}"/> state it).</summary>
    public int? EvaluationExamples { get; private set; } = evaluationExamples is null or > 0 ? evaluationExamples
        : throw new ArgumentOutOfRangeException(nameof(evaluationExamples), evaluationExamples, "The evaluation set has at least one example.");

    public IReadOnlyList<ComparisonRow> Rows => _rows;

    /// <summary>The largest number of seeds behind any row (0 when empty).</summary>
    public int Seeds => _rows.Count == 0 ? 0 : _rows.Max(r => r.Seeds);

    public MethodComparison Add(ComparisonRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        if (_rows.Any(r => r.Name == row.Name))
            throw new ArgumentException($"The comparison already has a row named '{row.Name}'; give each regime its own name.", nameof(row));
        _rows.Add(row);
        return this;
    }

    /// <summary>Adds a row from a training run's log (parameters, time, memory) and the score measured after it.</summary>
    public MethodComparison Add(string name, TrainingLog log, double score) =>
        Add(new ComparisonRow(name, log.TrainableParameters, log.AllParameters, score, log.Duration, log.PeakAboveStartBytes));

    /// <summary>Adds one row from the runs of one regime over several seeds (see <see cref="ComparisonRow.FromRuns"/>),
    /// and takes the evaluation set size from them.</summary>
    public MethodComparison Add(IReadOnlyList<RunResult> runs)
    {
        var row = ComparisonRow.FromRuns(runs);
        int examples = runs[0].EvaluationExamples;
        if (runs.Any(r => r.EvaluationExamples != examples) || (EvaluationExamples is int stated && stated != examples))
            throw new ArgumentException($"'{row.Name}' was evaluated on {examples} examples but the comparison's rows on {EvaluationExamples}: compare on one evaluation set.", nameof(runs));
        EvaluationExamples = examples;
        return Add(row);
    }

    /// <summary>The row named <paramref name="name"/>; throws listing the names when there is none.</summary>
    public ComparisonRow this[string name] => _rows.FirstOrDefault(r => r.Name == name)
        ?? throw new KeyNotFoundException($"No row named '{name}'; the rows are {string.Join(", ", _rows.Select(r => $"'{r.Name}'"))}.");

    /// <summary>The row with the best mean score, or null when empty.</summary>
    public ComparisonRow? Best => _rows.Count == 0 ? null : HigherIsBetter ? _rows.MaxBy(r => r.Score) : _rows.MinBy(r => r.Score);

    /// <summary>Whether <see cref="Metric"/> is an accuracy (a share of the evaluation examples, so its sampling error
    /// follows from the set's size).</summary>
    public bool IsAccuracy => Metric.Equals("accuracy", StringComparison.OrdinalIgnoreCase) && HigherIsBetter;

    /// <summary>
    /// The standard error an accuracy has from the evaluation set alone, √(p(1 − p) / n) for a row scoring p on n
    /// examples; null unless <see cref="IsAccuracy"/> and n is known. It is what a one-seed row can show as an error bar
    /// (450 sentences at 80% give ±1.9 points): it does not include the noise between training seeds, which only
    /// several seeds measure.
    /// </summary>
    public double? SamplingStandardError(ComparisonRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        if (!IsAccuracy || EvaluationExamples is not int n || row.Score is < 0 or > 1) return null;
        return Math.Sqrt(row.Score * (1 - row.Score) / n);
    }

    /// <summary>Whether the error bars are the evaluation sample's (±2 <see cref="SamplingStandardError"/>): one seed per
    /// row, an accuracy, and a known evaluation set. The table, the charts and their titles all ask this one question.</summary>
    public bool ShowsSamplingError => Seeds == 1 && _rows.Count > 0 && _rows.All(r => SamplingStandardError(r) is not null);

    /// <summary>"n seeds, m evaluation examples" (or what of it is known), for titles and captions.</summary>
    public string Basis => (Seeds == 1 ? "1 seed" : $"{Seeds} seeds") +
        (EvaluationExamples is int n ? $", {n:N0} evaluation examples" : "");
}

using PeftSharp.Training;

namespace PeftSharp.Analysis;

/// <summary>One trained regime in a comparison: what it trained and what it scored.</summary>
/// <param name="Name">e.g. "LoRA r=8 (query, value)" or "full fine-tuning".</param>
/// <param name="TrainableParameters">Parameters that received gradients.</param>
/// <param name="AllParameters">Parameters of the whole model (for the share).</param>
/// <param name="Score">The metric on held-out data (see <see cref="MethodComparison.Metric"/>).</param>
/// <param name="TrainingTime">Wall time of training (not of evaluation).</param>
/// <param name="PeakMemoryBytes">How far resident memory rose above its level at the start of training.</param>
public sealed record ComparisonRow(string Name, long TrainableParameters, long AllParameters, double Score, TimeSpan TrainingTime, long PeakMemoryBytes)
{
    public double TrainablePercent => AllParameters == 0 ? 0 : 100.0 * TrainableParameters / AllParameters;
}

/// <summary>
/// Regimes or methods trained on the same task, side by side: the record behind "accuracy against trainable parameters"
/// tables and charts. Rows keep the order they were added in.
/// </summary>
public sealed class MethodComparison(string title, string metric = "accuracy", bool higherIsBetter = true)
{
    readonly List<ComparisonRow> _rows = [];

    public string Title { get; } = title;

    /// <summary>The metric's name, e.g. "accuracy" or "perplexity".</summary>
    public string Metric { get; } = metric;

    public bool HigherIsBetter { get; } = higherIsBetter;

    public IReadOnlyList<ComparisonRow> Rows => _rows;

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

    /// <summary>The row with the best score, or null when empty.</summary>
    public ComparisonRow? Best => _rows.Count == 0 ? null : HigherIsBetter ? _rows.MaxBy(r => r.Score) : _rows.MinBy(r => r.Score);
}

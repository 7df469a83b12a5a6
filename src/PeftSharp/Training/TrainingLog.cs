namespace PeftSharp.Training;

/// <summary>One optimisation step as logged.</summary>
public sealed record TrainingStep(int Step, int Epoch, double Loss, double LearningRate, double? GradientNorm, TimeSpan Elapsed);

/// <summary>Metrics measured at a step (e.g. validation accuracy, perplexity).</summary>
public sealed record Evaluation(int Step, IReadOnlyDictionary<string, double> Metrics);

/// <summary>What a progress listener sees after each step: enough for a progress line (steps/s, ETA) and a live
/// loss curve.</summary>
public sealed record TrainingProgress(int Step, int TotalSteps, int Epoch, double Loss, double LearningRate, double StepsPerSecond,
                                      TimeSpan Elapsed, TimeSpan Remaining, Evaluation? LatestEvaluation)
{
    public double Fraction => TotalSteps == 0 ? 1 : (double)Step / TotalSteps;
}

/// <summary>The record of one training run: every step, every evaluation, and the run's totals.</summary>
public sealed class TrainingLog
{
    readonly List<TrainingStep> _steps = [];
    readonly List<Evaluation> _evaluations = [];

    public TrainingLog(string name, long trainableParameters, long allParameters)
    {
        Name = name;
        TrainableParameters = trainableParameters;
        AllParameters = allParameters;
    }

    /// <summary>What was trained, e.g. "LoRA r=8 on query,value".</summary>
    public string Name { get; }

    public long TrainableParameters { get; }

    public long AllParameters { get; }

    public IReadOnlyList<TrainingStep> Steps => _steps;

    public IReadOnlyList<Evaluation> Evaluations => _evaluations;

    public TimeSpan Duration { get; internal set; }

    /// <summary>Largest resident memory of the process during the run, in bytes (CPU memory; includes the runtime and
    /// everything else the process holds).</summary>
    public long PeakWorkingSetBytes { get; internal set; }

    /// <summary>How far the run's peak rose above the resident memory at its start, in bytes: what the run itself
    /// needed (see <see cref="ProcessMemory.ReturnFreedMemory"/> for comparing runs in one process).</summary>
    public long PeakAboveStartBytes { get; internal set; }

    public double? FirstLoss => _steps.Count > 0 ? _steps[0].Loss : null;

    public double? LastLoss => _steps.Count > 0 ? _steps[^1].Loss : null;

    /// <summary>Mean loss of the last <paramref name="count"/> steps (less noisy than the last one).</summary>
    public double? RecentLoss(int count = 10) => _steps.Count == 0 ? null : _steps.TakeLast(count).Average(s => s.Loss);

    public Evaluation? LastEvaluation => _evaluations.Count > 0 ? _evaluations[^1] : null;

    internal void Add(TrainingStep step) => _steps.Add(step);

    internal void Add(Evaluation evaluation) => _evaluations.Add(evaluation);
}

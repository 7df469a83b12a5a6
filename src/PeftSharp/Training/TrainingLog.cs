using System.Globalization;

namespace PeftSharp.Training;

/// <summary>One optimisation step as logged. <see cref="Loss"/> is the task loss (what the loss function returned), so
/// runs with and without regularisers compare; <see cref="Reported"/> holds each extra loss term's value under its name
/// and whatever the step's hooks reported (<see cref="TrainingStepContext.Report"/>).</summary>
public sealed record TrainingStep(int Step, int Epoch, double Loss, double LearningRate, double? GradientNorm, TimeSpan Elapsed)
{
    public IReadOnlyDictionary<string, double> Reported { get; init; } = new Dictionary<string, double>();
}

/// <summary>The trainable parameters changed before <paramref name="Step"/> (a hook froze, unfroze, added or removed
/// parameters): the paths that joined and left, and the trainable count from then on.</summary>
public sealed record TrainableSetChange(int Step, IReadOnlyList<string> Added, IReadOnlyList<string> Removed, long TrainableParameters);

/// <summary>Metrics measured at a step (e.g. validation accuracy, perplexity).</summary>
public sealed record Evaluation(int Step, IReadOnlyDictionary<string, double> Metrics);

/// <summary>What a progress listener sees after each step: enough for a progress line (steps/s, ETA) and a live
/// loss curve.</summary>
public sealed record TrainingProgress(int Step, int TotalSteps, int Epoch, double Loss, double LearningRate, double StepsPerSecond,
                                      TimeSpan Elapsed, TimeSpan Remaining, Evaluation? LatestEvaluation)
{
    public double Fraction => TotalSteps == 0 ? 1 : (double)Step / TotalSteps;

    /// <summary>What trains, as <see cref="TrainingLog.Trains"/> says it ("lora 'default': K of N parameters (x%)").</summary>
    public string Trains { get; init; } = "";

    /// <summary>Values reported at this step (extra loss terms, hooks).</summary>
    public IReadOnlyDictionary<string, double> Reported { get; init; } = new Dictionary<string, double>();
}

/// <summary>The record of one training run: every step, every evaluation, and the run's totals.</summary>
public sealed class TrainingLog
{
    readonly List<TrainingStep> _steps = [];
    readonly List<Evaluation> _evaluations = [];
    readonly List<TrainableSetChange> _changes = [];

    public TrainingLog(string name, long trainableParameters, long allParameters, string? trains = null)
    {
        Name = name;
        TrainableParameters = trainableParameters;
        AllParameters = allParameters;
        Trains = trains ?? Describe(trainableParameters, allParameters, null);
    }

    /// <summary>What was trained, e.g. "LoRA r=8 on query,value".</summary>
    public string Name { get; }

    /// <summary>Trainable parameter values at the start of the run.</summary>
    public long TrainableParameters { get; }

    public long AllParameters { get; }

    /// <summary>Share of the model's parameter values that trained at the start (1 for full fine-tuning).</summary>
    public double TrainableFraction => AllParameters == 0 ? 0 : (double)TrainableParameters / AllParameters;

    /// <summary>What trained, in words: "every parameter of the model (N)" for full fine-tuning, otherwise
    /// "K of N parameters (x%)", prefixed by the adapters ("lora 'default': ") when the run was given a <c>PeftModel</c>.
    /// Makes plain, in the log and the progress events, a run that trains more than was meant.</summary>
    public string Trains { get; }

    /// <summary>Changes of the trainable set during the run, in step order.</summary>
    public IReadOnlyList<TrainableSetChange> TrainableSetChanges => _changes;

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

    /// <summary>The values reported under <paramref name="name"/> (a loss term or a hook's scalar), one per step that
    /// reported it.</summary>
    public IReadOnlyList<(int Step, double Value)> Series(string name) =>
        _steps.Where(s => s.Reported.ContainsKey(name)).Select(s => (s.Step, s.Reported[name])).ToList();

    public override string ToString() => $"{Name}: {_steps.Count} steps, trains {Trains}";

    /// <summary>The <see cref="Trains"/> text for a run.</summary>
    public static string Describe(long trainable, long all, string? adapters) =>
        (adapters is null ? "" : adapters + ": ") + (trainable == all
            ? string.Create(CultureInfo.InvariantCulture, $"every parameter of the model ({all:N0})")
            : string.Create(CultureInfo.InvariantCulture, $"{trainable:N0} of {all:N0} parameters ({(double)trainable / Math.Max(1, all):P2})"));

    internal void Add(TrainingStep step) => _steps.Add(step);

    internal void Add(TrainableSetChange change) => _changes.Add(change);

    internal void Add(Evaluation evaluation) => _evaluations.Add(evaluation);

    readonly Dictionary<string, Analysis.RankAllocation> _rankAllocations = [];

    /// <summary>Where each adapter whose method moves rank during training (AdaLoRA) stood at the end of the run: its
    /// ranks per layer and the snapshots (layer × step) the method recorded, by adapter name. Empty for fixed-rank
    /// methods.</summary>
    public IReadOnlyDictionary<string, Analysis.RankAllocation> RankAllocations => _rankAllocations;

    internal void RecordRanks(Analysis.RankAllocation allocation) => _rankAllocations[allocation.AdapterName] = allocation;
}

using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>What one training run of a comparison produced: the score on held-out data and what it cost.</summary>
/// <param name="Name">The regime, e.g. "LoRA r=4"; runs of one regime over several seeds share it.</param>
/// <param name="Seed">The seed of the run (torch's generator and the batch order).</param>
/// <param name="Score">The metric on the evaluation set after training.</param>
/// <param name="Metric">The metric's name, e.g. "accuracy".</param>
/// <param name="EvaluationExamples">How many held-out examples <paramref name="Score"/> was measured on.</param>
/// <param name="Log">The run's training log: every step's loss, the evaluations, parameters, time and memory.</param>
public sealed record RunResult(string Name, int Seed, double Score, string Metric, int EvaluationExamples, TrainingLog Log)
{
    /// <summary>Parameters that received gradients.</summary>
    public long TrainableParameters => Log.TrainableParameters;

    public long AllParameters => Log.AllParameters;

    /// <summary>Wall time of training (evaluation excluded).</summary>
    public TimeSpan TrainingTime => Log.Duration;

    /// <summary>Whether resident memory was measured so that runs compare (see <see cref="TrainingHarness{TModel, TBatch}"/>'s
    /// <c>measureMemory</c>).</summary>
    public bool MemoryMeasured { get; init; }

    /// <summary>How far resident memory rose above its level at the start of training; null when it was not measured.</summary>
    public long? PeakMemoryBytes => MemoryMeasured ? Log.PeakAboveStartBytes : null;

    public override string ToString() =>
        $"{Name} (seed {Seed}): {Metric} {Score:0.####} on {EvaluationExamples:N0} examples, trainable {TrainableParameters:N0}, {TrainingTime.TotalSeconds:0.0} s";
}

/// <summary>
/// The training loop a notebook would otherwise copy into every comparison: for each run, seed torch's generator, build
/// a fresh model (with its adapter), train it with <see cref="Trainer"/> on seeded batches, score it on the evaluation
/// set, and return a <see cref="RunResult"/> (score, parameters, time, memory, log) that
/// <see cref="Analysis.MethodComparison"/> and <see cref="Analysis.LossCurves"/> take. The data, the loss and the metric
/// are set once per task, so the runs of a comparison differ only in the model and the options they are given.
/// </summary>
/// <typeparam name="TModel">The model type, so the loss and the score can call its own forward.</typeparam>
/// <typeparam name="TBatch">The batch type the data source yields.</typeparam>
/// <param name="batches">The batches of one epoch for a seed: (seed, epoch) → batches. Shuffle with a seed derived from
/// both (e.g. <c>set.Batches(64, seed: (ulong)(1000 * seed + epoch))</c>) so seeds differ in data order too.</param>
/// <param name="loss">The scalar training loss of a batch.</param>
/// <param name="score">The metric on the evaluation set; runs in eval mode without gradients, inside a dispose scope.</param>
/// <param name="evaluationExamples">The size of the evaluation set <paramref name="score"/> uses (reported with every result).</param>
/// <param name="metric">The metric's name.</param>
/// <param name="measureMemory">Measure each run's peak resident memory. Peaks only compare between runs of one process
/// when glibc hands freed blocks back (<see cref="ProcessMemory.ReturnFreedMemory"/>), which slows tensor code by about a
/// third, so it is done only when asked (and undone after each run); otherwise results say memory was not measured
/// rather than show a number that means nothing.</param>
public sealed class TrainingHarness<TModel, TBatch>(
    Func<int, int, IReadOnlyList<TBatch>> batches, Func<TModel, TBatch, Tensor> loss, Func<TModel, double> score,
    int evaluationExamples, string metric = "accuracy", bool measureMemory = false) where TModel : nn.Module
{
    public bool MeasuresMemory { get; } = measureMemory;

    public string Metric { get; } = metric;

    public int EvaluationExamples { get; } = evaluationExamples > 0 ? evaluationExamples
        : throw new ArgumentOutOfRangeException(nameof(evaluationExamples), evaluationExamples, "The evaluation set has at least one example.");

    /// <summary>The adapted model of a run's model, when it has one: runs then train through
    /// <see cref="Trainer.Fit{TBatch}(Adapters.PeftModel, Func{int, IReadOnlyList{TBatch}}, Func{TBatch, Tensor}, TrainerOptions, Func{IReadOnlyDictionary{string, double}}?, string?)"/>,
    /// so methods that act during training (AdaLoRA's and IncreLoRA's rank allocation, their regularisers) join the run
    /// and record their ranks in the log. Null (the default): the model's trainable parameters train as they are.</summary>
    public Func<TModel, Adapters.PeftModel?>? PeftOf { get; init; }

    /// <summary>Dispose each run's model once it is scored and <c>afterTraining</c> has seen it (the default: a loop over
    /// many runs keeps no memory). False leaves the models to the caller, e.g. to keep one for a closer look and dispose
    /// the others in <c>afterTraining</c>.</summary>
    public bool DisposeModels { get; init; } = true;

    /// <summary>Raised after every step of every run (e.g. for a progress line); the string is the run's name.</summary>
    public event Action<string, TrainingProgress>? Progress;

    /// <summary>
    /// One run: <c>torch.manual_seed(seed)</c>, <paramref name="createModel"/> (load the model, attach the adapter, set
    /// what trains), train with <paramref name="options"/>, score. <paramref name="beforeTraining"/> sees the fresh model
    /// and the run's <see cref="Trainer"/> before the first step (add a loss term such as MoLA's load balancing, a gradient
    /// mask, SORSA's regulariser with <c>SorsaRegularizer.AddTo</c>, or a per-step hook that reports a number to the log
    /// with <c>trainer.AfterStep</c> and <see cref="TrainingStepContext.Report"/>); <paramref name="afterTraining"/> sees the trained model before it is disposed (for spectra,
    /// say). The model is disposed unless <see cref="DisposeModels"/> is false.
    /// </summary>
    public RunResult Run(string name, int seed, Func<TModel> createModel, TrainerOptions options, Action<TModel>? afterTraining = null,
                         Action<TModel, Trainer>? beforeTraining = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(createModel);
        ArgumentNullException.ThrowIfNull(options);
        torch.manual_seed(seed);
        var model = createModel();
        if (MeasuresMemory) ProcessMemory.ReturnFreedMemory();
        try
        {
            var trainer = new Trainer();
            if (Progress is { } listeners) trainer.Progress += p => listeners(name, p);
            beforeTraining?.Invoke(model, trainer);
            Func<IReadOnlyDictionary<string, double>> evaluate = () => new Dictionary<string, double> { [Metric] = score(model) };
            var log = PeftOf?.Invoke(model) is { } peft
                ? trainer.Fit(peft, epoch => batches(seed, epoch), batch => loss(model, batch), options, evaluate, name)
                : trainer.Fit(model, epoch => batches(seed, epoch), batch => loss(model, batch), options, evaluate, name);
            // The trainer evaluates after its last step; this holds when a later epoch ran out of batches early.
            double value = log.LastEvaluation is { } last && last.Step == log.Steps[^1].Step && last.Metrics.TryGetValue(Metric, out var v) ? v : Score(model);
            afterTraining?.Invoke(model);
            return new RunResult(name, seed, value, Metric, EvaluationExamples, log) { MemoryMeasured = MeasuresMemory };
        }
        finally
        {
            if (DisposeModels) model.Dispose();
            if (MeasuresMemory) ProcessMemory.KeepFreedMemory();
        }
    }

    /// <summary>The same regime once per seed, in the order given; the list <see cref="Analysis.MethodComparison.Add(IReadOnlyList{RunResult})"/>
    /// takes as one row.</summary>
    public IReadOnlyList<RunResult> RunSeeds(string name, IEnumerable<int> seeds, Func<TModel> createModel, TrainerOptions options, Action<TModel, int>? afterTraining = null,
                                             Action<TModel, Trainer>? beforeTraining = null)
    {
        ArgumentNullException.ThrowIfNull(seeds);
        var list = seeds.ToList();
        if (list.Count == 0) throw new ArgumentException("Give at least one seed.", nameof(seeds));
        if (list.Distinct().Count() != list.Count) throw new ArgumentException($"Seeds repeat in [{string.Join(", ", list)}]: each seed runs once.", nameof(seeds));
        return list.Select(seed => Run(name, seed, createModel, options, afterTraining is null ? null : m => afterTraining(m, seed), beforeTraining)).ToList();
    }

    double Score(TModel model)
    {
        model.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return score(model);
    }
}

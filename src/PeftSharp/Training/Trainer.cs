using System.Diagnostics;
using System.Globalization;
using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>How the learning rate moves over the run, after an optional linear warm-up.</summary>
public enum LearningRateSchedule { Constant, Linear, Cosine }

/// <summary>Options of <see cref="Trainer"/>. Defaults suit adapter training (AdamW, clip at 1).</summary>
public sealed record TrainerOptions
{
    public int Epochs { get; init; } = 1;

    /// <summary>Stop after this many steps even within an epoch (null: run every epoch in full).</summary>
    public int? MaxSteps { get; init; }

    public double LearningRate { get; init; } = 1e-3;

    public double WeightDecay { get; init; }

    /// <summary>Clip the global gradient norm to this (null: no clipping).</summary>
    public double? MaxGradientNorm { get; init; } = 1.0;

    public LearningRateSchedule Schedule { get; init; } = LearningRateSchedule.Constant;

    /// <summary>Fraction of the steps spent warming the learning rate up linearly from 0.</summary>
    public double WarmupFraction { get; init; }

    /// <summary>Evaluate every this many steps and at the end (null: only at the end).</summary>
    public int? EvaluateEvery { get; init; }

    /// <summary>Refuses options that cannot train, naming the option, its value and what would be right. NaN fails
    /// every comparison, so each rule is written as "the value is good" and negated: NaN and infinities never pass.</summary>
    public void Validate()
    {
        if (Epochs < 1) throw Invalid(nameof(Epochs), Epochs, "must be at least 1");
        if (MaxSteps is < 1) throw Invalid(nameof(MaxSteps), MaxSteps, "must be positive (or null to run whole epochs)");
        if (!(LearningRate > 0 && double.IsFinite(LearningRate))) throw Invalid(nameof(LearningRate), LearningRate, "must be a positive finite number, e.g. 1e-3");
        if (!(WeightDecay >= 0 && double.IsFinite(WeightDecay))) throw Invalid(nameof(WeightDecay), WeightDecay, "must be finite and not negative, e.g. 0 or 0.01");
        if (MaxGradientNorm is double norm && !(norm > 0 && double.IsFinite(norm)))
            throw Invalid(nameof(MaxGradientNorm), norm, "must be positive and finite (or null for no clipping), e.g. 1.0");
        if (!(WarmupFraction >= 0 && WarmupFraction < 1)) throw Invalid(nameof(WarmupFraction), WarmupFraction, "must be in [0, 1), e.g. 0.1");
        if (EvaluateEvery is < 1) throw Invalid(nameof(EvaluateEvery), EvaluateEvery, "must be positive (or null to evaluate only at the end)");
    }

    static ArgumentOutOfRangeException Invalid(string option, object? value, string rule) =>
        new(option, value, string.Create(CultureInfo.InvariantCulture, $"TrainerOptions.{option} is {value}; it {rule}."));
}

/// <summary>Training stopped because a value became NaN or infinite. It is raised before the optimizer step, so every
/// parameter still holds its value after step <see cref="Step"/> − 1.</summary>
public sealed class NonFiniteTrainingException(int step, string what, string? parameterName, string message) : InvalidOperationException(message)
{
    /// <summary>The 1-based step that went non-finite.</summary>
    public int Step { get; } = step;

    /// <summary>What went non-finite: "loss", "loss term 'NAME'" or "gradient of 'PATH'".</summary>
    public string What { get; } = what;

    /// <summary>The parameter's path in the model when a gradient went non-finite, else null.</summary>
    public string? ParameterName { get; } = parameterName;
}

/// <summary>
/// What a hook (<see cref="Trainer.AfterBackward"/>, <see cref="Trainer.AfterStep"/>) sees of the step being run.
/// Hooks run inside the step's dispose scope: tensors they create are freed with the step, so anything a hook keeps
/// (a new parameter, a mask, an importance estimate) must be moved out with <c>DetachFromDisposeScope()</c>.
/// </summary>
public sealed class TrainingStepContext
{
    readonly Dictionary<string, double> _reported;

    readonly TrainingLog? _log;

    internal TrainingStepContext(int step, int epoch, double learningRate, nn.Module model,
                                 IReadOnlyList<(string Name, Parameter Parameter)> parameters, double loss, Dictionary<string, double> reported,
                                 TrainingLog? log = null)
    {
        _log = log;
        Step = step;
        Epoch = epoch;
        LearningRate = learningRate;
        Model = model;
        Parameters = parameters;
        Loss = loss;
        _reported = reported;
    }

    /// <summary>The 1-based number of the step being run (the log's <see cref="TrainingStep.Step"/>).</summary>
    public int Step { get; }

    public int Epoch { get; }

    public double LearningRate { get; }

    /// <summary>The module being trained (a <c>PeftModel</c>'s <c>Model</c> when one was given).</summary>
    public nn.Module Model { get; }

    /// <summary>The parameters this step trains, with their paths in <see cref="Model"/>. After the backward pass their
    /// <c>.grad</c> holds this step's (masked) gradient; after the step, their new values.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters { get; }

    /// <summary>The task loss of this step (without the extra loss terms).</summary>
    public double Loss { get; }

    /// <summary>Records a named scalar for this step in the log (<see cref="TrainingStep.Reported"/>,
    /// <see cref="TrainingLog.Series"/>); a second report of the same name in the step replaces the first.</summary>
    public void Report(string name, double value)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        _reported[name] = value;
    }

    /// <summary>Records where a method that moves rank during training (AdaLoRA) stands: the log keeps the latest
    /// <see cref="Analysis.RankAllocation"/> per adapter, with the snapshots the method took
    /// (<see cref="TrainingLog.RankAllocations"/>).</summary>
    public void RecordRanks(Analysis.RankAllocation allocation)
    {
        ArgumentNullException.ThrowIfNull(allocation);
        _log?.RecordRanks(allocation);
    }
}

/// <summary>
/// A plain training loop over whatever parameters of a model are trainable, so it serves adapter methods (give it the
/// <see cref="PeftModel"/>), full fine-tuning and head-only training (give it the module) alike: AdamW
/// (<see cref="AdamWOptimizer"/>), optional gradient clipping, a learning-rate schedule, a log, and a
/// <see cref="Progress"/> event after every step (the notebook's live view and the CLI's progress bar listen to it).
/// <para>One step: zero the gradients; task loss plus every extra loss term (<see cref="AddLossTerm"/>); backward;
/// gradient masks (<see cref="MaskGradient"/>) multiplied into <c>.grad</c>; check that the loss, the terms and every
/// gradient are finite (else <see cref="NonFiniteTrainingException"/>, with nothing updated); <see cref="AfterBackward"/>;
/// clip; AdamW; <see cref="AfterStep"/>. Each step runs in its own dispose scope, hooks included.</para>
/// <para>The trainable set is re-read before every step (<c>requires_grad</c>), so a hook may freeze, unfreeze, add or
/// remove parameters: the optimizer keeps the moments of the parameters that stay, starts new ones from zero, drops
/// those that left, and the log records the change (<see cref="TrainingLog.TrainableSetChanges"/>).</para>
/// </summary>
public sealed class Trainer
{
    readonly List<(string Name, Func<Tensor> Term)> _lossTerms = [];
    readonly Dictionary<Parameter, Tensor> _masks = new(ReferenceEqualityComparer.Instance);
    readonly Dictionary<Parameter, double> _learningRateScales = new(ReferenceEqualityComparer.Instance);

    /// <summary>Raised after every step, on the training thread.</summary>
    public event Action<TrainingProgress>? Progress;

    /// <summary>Raised after the backward pass and the gradient masks, before clipping and the optimizer step: the
    /// place to read gradients (e.g. AdaLoRA's importance, an EMA of |p·grad|). Gradients have been checked finite.</summary>
    public event Action<TrainingStepContext>? AfterBackward;

    /// <summary>Raised after the optimizer step: the place to change ranks, masks or which parameters train. Changes of
    /// <c>requires_grad</c> and new parameters take effect at the next step.</summary>
    public event Action<TrainingStepContext>? AfterStep;

    /// <summary>The names of the extra loss terms, in the order they are added to the loss.</summary>
    public IReadOnlyList<string> LossTerms => _lossTerms.Select(t => t.Name).ToList();

    /// <summary>
    /// Adds <paramref name="term"/>'s scalar to the loss at every step (a regulariser: SORSA's orthonormality penalty,
    /// AdaLoRA's orthogonality regulariser, MoLA's load balancing). It is called after the task loss, so it may read
    /// what the forward pass left behind (router probabilities, ...), inside the step's dispose scope and with gradients
    /// on; its value is logged under <paramref name="name"/> in <see cref="TrainingStep.Reported"/>. Scale the term
    /// yourself (return <c>0.1 * penalty</c>).
    /// </summary>
    public void AddLossTerm(string name, Func<Tensor> term)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(term);
        if (_lossTerms.Any(t => t.Name == name))
            throw new ArgumentException($"A loss term named '{name}' was already added (terms: {string.Join(", ", LossTerms)}); give each term its own name.", nameof(name));
        _lossTerms.Add((name, term));
    }

    /// <summary>Removes the loss term named <paramref name="name"/>; false if there was none.</summary>
    public bool RemoveLossTerm(string name) => _lossTerms.RemoveAll(t => t.Name == name) > 0;

    /// <summary>
    /// Trains only some entries of <paramref name="parameter"/>: after every backward pass its gradient is multiplied by
    /// <paramref name="mask"/> (same shape as the parameter, bool or floating, on its device; 1 = train, 0 = keep), and
    /// so is its AdamW update, weight decay included, so an entry masked with 0 keeps its exact value. The trainer keeps
    /// the caller's tensor, not a copy: an <see cref="AfterStep"/> hook may change its entries in place (keep it out of
    /// dispose scopes). A second call for the same parameter replaces the mask.
    /// </summary>
    public void MaskGradient(Parameter parameter, Tensor mask)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        ArgumentNullException.ThrowIfNull(mask);
        if (!mask.shape.SequenceEqual(parameter.shape))
            throw new ArgumentException($"The gradient mask has shape [{string.Join(", ", mask.shape)}] but the parameter has shape " +
                                        $"[{string.Join(", ", parameter.shape)}]; give a mask of the parameter's shape (1 = train, 0 = keep).", nameof(mask));
        if (mask.device_type != parameter.device_type || mask.device_index != parameter.device_index)
            throw new ArgumentException($"The gradient mask is on {mask.device} but the parameter is on {parameter.device}; move the mask with .to(parameter.device).", nameof(mask));
        if (mask.dtype != ScalarType.Bool && !mask.is_floating_point())
            throw new ArgumentException($"The gradient mask has type {mask.dtype}; use Bool or a floating type (1 = train, 0 = keep).", nameof(mask));
        _masks[parameter] = mask;
    }

    /// <summary>Trains every entry of <paramref name="parameter"/> again; false if it had no mask.</summary>
    public bool RemoveGradientMask(Parameter parameter) => _masks.Remove(parameter);

    /// <summary>
    /// Multiplies <paramref name="parameter"/>'s learning rate (the schedule's, weight decay included) by
    /// <paramref name="scale"/> in [0, 1] from the next step on, as a PyTorch param group with its own lr: a method that
    /// adds parameters during training warms them up on their own (IncreLoRA's restart warm-up). A second call replaces
    /// the scale; <see cref="RemoveLearningRateScale"/> goes back to the schedule's rate.
    /// </summary>
    public void ScaleLearningRate(Parameter parameter, double scale)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (!(scale >= 0 && scale <= 1))
            throw new ArgumentOutOfRangeException(nameof(scale), scale, "A learning-rate scale is a factor in [0, 1] on the schedule's rate (e.g. 0.25 a quarter into a warm-up).");
        _learningRateScales[parameter] = scale;
    }

    /// <summary>Trains <paramref name="parameter"/> at the schedule's rate again; false if it had no scale.</summary>
    public bool RemoveLearningRateScale(Parameter parameter) => _learningRateScales.Remove(parameter);

    /// <summary>
    /// Trains the adapters of <paramref name="peft"/>: exactly the parameters of <c>peft.Model</c> that require
    /// gradients (the active adapters, plus anything you unfroze yourself), never a frozen base weight. Refuses a
    /// PeftModel with no active adapter, disabled adapters, or nothing trainable. <paramref name="name"/> defaults to
    /// the active adapters, e.g. "lora 'default'". See the other overload for the arguments.
    /// </summary>
    public TrainingLog Fit<TBatch>(PeftModel peft, Func<int, IReadOnlyList<TBatch>> batches, Func<TBatch, Tensor> loss,
                                   TrainerOptions options, Func<IReadOnlyDictionary<string, double>>? evaluate = null, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (peft.ActiveAdapters.Count == 0)
            throw new InvalidOperationException($"The PeftModel has no active adapter (adapters: {(peft.AdapterNames.Count == 0 ? "none" : string.Join(", ", peft.AdapterNames))}); " +
                                                "call SetActiveAdapters(...) before training.");
        if (peft.AdaptersDisabled)
            throw new InvalidOperationException("The PeftModel's adapters are disabled (DisableAdapters()), so training them would change nothing the model computes; " +
                                                "call EnableAdapters() or dispose the DisableAdapters() scope first.");
        string adapters = string.Join(", ", peft.ActiveAdapters.Select(a => $"{peft.Config(a).MethodName} '{a}'"));
        if (TrainableParameters(peft.Model).Count == 0)
            throw new InvalidOperationException($"The PeftModel's active adapters ({adapters}) have no trainable parameters (loaded with trainable: false, or frozen); " +
                                                "load them with trainable: true or set requires_grad on the parameters to train.");
        // Methods that act during training (AdaLoRA's allocation and regulariser) join this run and leave after it.
        var attached = peft.ActiveAdapters.Select(a => peft.Config(a).AttachToTraining(peft, a, this)).OfType<IDisposable>().ToList();
        try
        {
            return Run(peft.Model, batches, loss, options, evaluate, name ?? adapters, adapters);
        }
        finally
        {
            foreach (var detach in attached) detach.Dispose();
        }
    }

    /// <summary>
    /// Trains <paramref name="model"/>'s trainable parameters (those that require gradients): full fine-tuning when
    /// nothing is frozen, head-only training when only the head requires gradients. For adapters, prefer the
    /// <see cref="PeftModel"/> overload. The log's <see cref="TrainingLog.Trains"/> and every progress event say what
    /// trains ("every parameter of the model (N)" or "K of N parameters (x%)"), so a run that trains the whole base by
    /// mistake shows it. <paramref name="batches"/> gives the batches of an epoch (called once per epoch, so it can
    /// reshuffle), <paramref name="loss"/> computes a scalar loss for a batch, and the optional
    /// <paramref name="evaluate"/> returns metrics (it runs in eval mode, without gradients).
    /// </summary>
    public TrainingLog Fit<TBatch>(nn.Module model, Func<int, IReadOnlyList<TBatch>> batches, Func<TBatch, Tensor> loss,
                                   TrainerOptions options, Func<IReadOnlyDictionary<string, double>>? evaluate = null, string name = "training")
    {
        ArgumentNullException.ThrowIfNull(model);
        return Run(model, batches, loss, options, evaluate, name, adapters: null);
    }

    TrainingLog Run<TBatch>(nn.Module model, Func<int, IReadOnlyList<TBatch>> batches, Func<TBatch, Tensor> loss, TrainerOptions options,
                            Func<IReadOnlyDictionary<string, double>>? evaluate, string name, string? adapters)
    {
        ArgumentNullException.ThrowIfNull(batches);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var parameters = TrainableParameters(model);
        if (parameters.Count == 0)
            throw new InvalidOperationException("The model has no trainable parameters: add an adapter, or set requires_grad on the parameters to train.");
        // Large activations and gradients reused from step to step instead of paged in afresh (a LoRA step: 0.75x full
        // fine-tuning instead of 0.94-1.10x, ProcessMemory.KeepFreedMemory); a run that measures memory keeps its setting.
        ProcessMemory.PreferReuseForTraining();
        long all = model.parameters().Sum(p => p.numel());
        long trainable = parameters.Sum(p => p.Parameter.numel());
        var log = new TrainingLog(name, trainable, all, TrainingLog.Describe(trainable, all, adapters));

        int stepsPerEpoch = batches(0).Count;
        if (stepsPerEpoch == 0) throw new ArgumentException("The first epoch has no batches.", nameof(batches));
        int totalSteps = (int)Math.Min(options.MaxSteps ?? int.MaxValue, (long)stepsPerEpoch * options.Epochs);
        using var optimizer = new AdamWOptimizer();
        ProcessMemory.ResetPeak();
        long startMemory = ProcessMemory.Resident();
        var clock = Stopwatch.StartNew();
        int step = 0;
        model.train();
        try
        {
            for (int epoch = 0; epoch < options.Epochs && step < totalSteps; epoch++)
            {
                var epochBatches = batches(epoch);
                foreach (var batch in epochBatches)
                {
                    if (step >= totalSteps) break;
                    double lr = LearningRateAt(step, totalSteps, options);
                    parameters = UpdateTrainableSet(model, parameters, optimizer, log, step + 1);

                    var reported = new Dictionary<string, double>();
                    var (lossValue, gradientNorm) = TrainStep(model, batch, loss, parameters, optimizer, options, step + 1, epoch, lr, reported, log);
                    step++;
                    log.Add(new TrainingStep(step, epoch, lossValue, lr, gradientNorm, clock.Elapsed) { Reported = reported });

                    Evaluation? evaluation = null;
                    if (evaluate is not null && (step == totalSteps || (options.EvaluateEvery is int every && step % every == 0)))
                    {
                        evaluation = new Evaluation(step, Evaluate(model, evaluate));
                        log.Add(evaluation);
                    }
                    double perSecond = step / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
                    Progress?.Invoke(new TrainingProgress(step, totalSteps, epoch, lossValue, lr, perSecond, clock.Elapsed,
                        TimeSpan.FromSeconds((totalSteps - step) / Math.Max(perSecond, 1e-9)), evaluation ?? log.LastEvaluation)
                    { Trains = log.Trains, Reported = reported });
                }
            }
        }
        finally
        {
            model.eval();
            log.Duration = clock.Elapsed;
            log.PeakWorkingSetBytes = ProcessMemory.Peak();
            log.PeakAboveStartBytes = Math.Max(0, log.PeakWorkingSetBytes - startMemory);
        }
        return log;
    }

    /// <summary>One step (see the class summary); returns the task loss and the gradient norm before clipping. Throws
    /// <see cref="NonFiniteTrainingException"/> before anything is updated when the loss, a term or a gradient is not
    /// finite.</summary>
    (double Loss, double? GradientNorm) TrainStep<TBatch>(nn.Module model, TBatch batch, Func<TBatch, Tensor> loss,
                                                         IReadOnlyList<(string Name, Parameter Parameter)> parameters, AdamWOptimizer optimizer,
                                                         TrainerOptions options, int step, int epoch, double lr, Dictionary<string, double> reported,
                                                         TrainingLog log)
    {
        using var scope = NewDisposeScope();
        ZeroGradients(parameters);
        var value = loss(batch);
        double lossValue = Scalar(value, step, "The loss function");
        if (!double.IsFinite(lossValue))
            throw new NonFiniteTrainingException(step, "loss", null, string.Create(CultureInfo.InvariantCulture,
                $"Step {step}: the loss is {lossValue} (learning rate {lr:G3}); nothing was updated, so the parameters keep their values after step {step - 1}. " +
                $"Lower the learning rate, check the data, or look for log, sqrt or division at 0 in the loss."));
        var total = value;
        foreach (var (termName, term) in _lossTerms)
        {
            var termValue = term();
            double number = Scalar(termValue, step, $"The loss term '{termName}'");
            if (!double.IsFinite(number))
                throw new NonFiniteTrainingException(step, $"loss term '{termName}'", null, string.Create(CultureInfo.InvariantCulture,
                    $"Step {step}: the loss term '{termName}' is {number} (task loss {lossValue:G6}); nothing was updated, so the parameters keep their values after step {step - 1}."));
            reported[termName] = number;
            total = total + termValue;
        }
        total.backward();
        foreach (var (_, parameter) in parameters)
            if (_masks.TryGetValue(parameter, out var mask) && parameter.grad is { } grad)
                grad.mul_(mask);
        CheckGradients(parameters, step, lossValue);

        var context = new TrainingStepContext(step, epoch, lr, model, parameters, lossValue, reported, log);
        AfterBackward?.Invoke(context);
        double? gradientNorm = null;
        if (options.MaxGradientNorm is double maxNorm)
            gradientNorm = nn.utils.clip_grad_norm_(parameters.Select(p => p.Parameter), maxNorm);
        optimizer.Step(parameters.Select(p => p.Parameter), lr, options.WeightDecay, p => _masks.GetValueOrDefault(p),
                       _learningRateScales.Count == 0 ? null : p => _learningRateScales.GetValueOrDefault(p, 1.0));
        AfterStep?.Invoke(context);
        return (lossValue, gradientNorm);
    }

    static double Scalar(Tensor value, int step, string what)
    {
        if (value.numel() != 1)
            throw new InvalidOperationException($"{what} returned a tensor of shape [{string.Join(", ", value.shape)}] at step {step}; it must return a scalar (e.g. take .mean()).");
        return value.ToDouble();
    }

    /// <summary>Raises <see cref="NonFiniteTrainingException"/> naming the first parameter whose gradient holds NaN or
    /// ±Inf. One tensor per parameter and a single read back while all is well.</summary>
    static void CheckGradients(IReadOnlyList<(string Name, Parameter Parameter)> parameters, int step, double loss)
    {
        var finite = parameters.Select(p => p.Parameter.grad).OfType<Tensor>().Select(g => g.isfinite().all()).ToList();
        if (finite.Count == 0 || stack(finite).all().item<bool>()) return;
        foreach (var (name, parameter) in parameters)
        {
            if (parameter.grad is not { } grad) continue;
            long bad = grad.isfinite().logical_not().sum().item<long>();
            if (bad == 0) continue;
            long nan = grad.isnan().sum().item<long>();
            throw new NonFiniteTrainingException(step, $"gradient of '{name}'", name, string.Create(CultureInfo.InvariantCulture,
                $"Step {step}: the gradient of '{name}' has {bad} non-finite {(bad == 1 ? "entry" : "entries")} ({nan} NaN, {bad - nan} infinite) " +
                $"although the loss ({loss:G6}) is finite; nothing was updated, so the parameters keep their values after step {step - 1}. " +
                $"Look for log, sqrt or division at 0 in the model or a loss term, or lower the learning rate."));
        }
    }

    static void ZeroGradients(IReadOnlyList<(string Name, Parameter Parameter)> parameters)
    {
        foreach (var (_, parameter) in parameters)
            parameter.grad?.zero_();
    }

    /// <summary>The parameters of <paramref name="model"/> that require gradients, with their paths, in model order.</summary>
    static List<(string Name, Parameter Parameter)> TrainableParameters(nn.Module model) =>
        model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)).ToList();

    /// <summary>Re-reads the trainable set before step <paramref name="step"/>; when it changed, logs the change and
    /// drops the optimizer state of the parameters that left.</summary>
    static List<(string Name, Parameter Parameter)> UpdateTrainableSet(nn.Module model, List<(string Name, Parameter Parameter)> previous,
                                                                       AdamWOptimizer optimizer, TrainingLog log, int step)
    {
        var current = TrainableParameters(model);
        if (current.Count == previous.Count && current.Zip(previous).All(p => ReferenceEquals(p.First.Parameter, p.Second.Parameter)))
            return previous;
        if (current.Count == 0)
            throw new InvalidOperationException($"No parameter of the model requires gradients at step {step} (a hook froze them all); leave at least one trainable or stop training.");
        var before = new HashSet<Parameter>(previous.Select(p => p.Parameter), ReferenceEqualityComparer.Instance);
        var after = new HashSet<Parameter>(current.Select(p => p.Parameter), ReferenceEqualityComparer.Instance);
        optimizer.Forget(after);
        log.Add(new TrainableSetChange(step,
            current.Where(p => !before.Contains(p.Parameter)).Select(p => p.Name).ToList(),
            previous.Where(p => !after.Contains(p.Parameter)).Select(p => p.Name).ToList(),
            current.Sum(p => p.Parameter.numel())));
        return current;
    }

    static IReadOnlyDictionary<string, double> Evaluate(nn.Module model, Func<IReadOnlyDictionary<string, double>> evaluate)
    {
        model.eval();
        try
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            return evaluate();
        }
        finally
        {
            model.train();
        }
    }

    /// <summary>The learning rate at <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>.</summary>
    public static double LearningRateAt(int step, int totalSteps, TrainerOptions options)
    {
        int warmup = (int)(options.WarmupFraction * totalSteps);
        if (step < warmup) return options.LearningRate * (step + 1) / warmup;
        double progress = (double)(step - warmup) / Math.Max(1, totalSteps - warmup);   // 0 at the first step after warm-up
        return options.Schedule switch
        {
            LearningRateSchedule.Linear => options.LearningRate * (1 - progress),
            LearningRateSchedule.Cosine => options.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * progress)),
            _ => options.LearningRate,
        };
    }
}

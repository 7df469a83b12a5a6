using System.Diagnostics;
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

    public void Validate()
    {
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "Train for at least one epoch.");
        if (MaxSteps is < 1) throw new ArgumentOutOfRangeException(nameof(MaxSteps), MaxSteps, "MaxSteps must be positive (or null for whole epochs).");
        if (LearningRate <= 0) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "The learning rate must be positive, e.g. 1e-3.");
        if (WarmupFraction is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(WarmupFraction), WarmupFraction, "WarmupFraction is in [0, 1).");
        if (MaxGradientNorm is <= 0) throw new ArgumentOutOfRangeException(nameof(MaxGradientNorm), MaxGradientNorm, "MaxGradientNorm must be positive (or null for no clipping).");
    }
}

/// <summary>
/// A plain training loop over whatever parameters of a model are trainable, so it serves full fine-tuning, head-only
/// training and every adapter method alike: AdamW, optional gradient clipping, a learning-rate schedule, a log, and a
/// <see cref="Progress"/> event after every step (the notebook's live view and the CLI's progress bar listen to it).
/// Each step runs in its own dispose scope.
/// </summary>
public sealed class Trainer
{
    /// <summary>Raised after every step, on the training thread.</summary>
    public event Action<TrainingProgress>? Progress;

    /// <summary>
    /// Trains <paramref name="model"/>'s trainable parameters. <paramref name="batches"/> gives the batches of an epoch
    /// (called once per epoch, so it can reshuffle), <paramref name="loss"/> computes a scalar loss for a batch, and the
    /// optional <paramref name="evaluate"/> returns metrics (it runs in eval mode, without gradients).
    /// </summary>
    public TrainingLog Fit<TBatch>(nn.Module model, Func<int, IReadOnlyList<TBatch>> batches, Func<TBatch, Tensor> loss,
                                   TrainerOptions options, Func<IReadOnlyDictionary<string, double>>? evaluate = null, string name = "training")
    {
        options.Validate();
        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        if (parameters.Count == 0)
            throw new InvalidOperationException("The model has no trainable parameters: add an adapter, or set requires_grad on the parameters to train.");
        long all = model.parameters().Sum(p => p.numel());
        var log = new TrainingLog(name, parameters.Sum(p => p.numel()), all);

        int stepsPerEpoch = batches(0).Count;
        if (stepsPerEpoch == 0) throw new ArgumentException("The first epoch has no batches.", nameof(batches));
        int totalSteps = Math.Min(options.MaxSteps ?? int.MaxValue, stepsPerEpoch * options.Epochs);
        var optimizer = optim.AdamW(parameters, lr: options.LearningRate, weight_decay: options.WeightDecay);
        ProcessMemory.ResetPeak();
        long startMemory = ProcessMemory.Resident();
        var clock = Stopwatch.StartNew();
        int step = 0;
        model.train();
        try
        {
            for (int epoch = 0; epoch < options.Epochs && step < totalSteps; epoch++)
            {
                var epochBatches = epoch == 0 ? batches(0) : batches(epoch);
                foreach (var batch in epochBatches)
                {
                    if (step >= totalSteps) break;
                    double lr = LearningRateAt(step, totalSteps, options);
                    foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;

                    double lossValue;
                    double? gradientNorm = null;
                    using (var scope = NewDisposeScope())
                    {
                        optimizer.zero_grad();
                        var value = loss(batch);
                        value.backward();
                        if (options.MaxGradientNorm is double maxNorm)
                            gradientNorm = nn.utils.clip_grad_norm_(parameters, maxNorm);
                        optimizer.step();
                        lossValue = value.item<float>();
                    }
                    step++;
                    if (!double.IsFinite(lossValue))
                        throw new InvalidOperationException($"The loss became {lossValue} at step {step} (learning rate {lr:G3}); lower the learning rate or check the data.");
                    log.Add(new TrainingStep(step, epoch, lossValue, lr, gradientNorm, clock.Elapsed));

                    Evaluation? evaluation = null;
                    if (evaluate is not null && (step == totalSteps || (options.EvaluateEvery is int every && step % every == 0)))
                    {
                        evaluation = new Evaluation(step, Evaluate(model, evaluate));
                        log.Add(evaluation);
                    }
                    double perSecond = step / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
                    Progress?.Invoke(new TrainingProgress(step, totalSteps, epoch, lossValue, lr, perSecond, clock.Elapsed,
                        TimeSpan.FromSeconds((totalSteps - step) / Math.Max(perSecond, 1e-9)), evaluation ?? log.LastEvaluation));
                }
            }
        }
        finally
        {
            model.eval();
            log.Duration = clock.Elapsed;
            log.PeakWorkingSetBytes = ProcessMemory.Peak();
            log.PeakAboveStartBytes = Math.Max(0, log.PeakWorkingSetBytes - startMemory);
            optimizer.Dispose();
        }
        return log;
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

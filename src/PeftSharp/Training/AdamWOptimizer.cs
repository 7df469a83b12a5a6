using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter 2019) with the arithmetic of <c>torch.optim.AdamW</c> and TorchSharp's
/// <c>optim.AdamW</c> (decoupled weight decay <c>p ← p·(1 − lr·λ)</c>, bias-corrected moments, ε added to
/// <c>√v̂</c>), written here so that the set of parameters can change between steps: the state (step count, first and
/// second moments, each shaped like its parameter) is kept per <see cref="Parameter"/> object, a parameter that first
/// appears starts from zero moments, and <see cref="Forget"/> drops the state of parameters that left. TorchSharp's
/// optimizers fix their parameter list when they are built (only <c>add_param_group</c>, no removal), which suits
/// neither rank changes nor freezing during training.
/// <para>A step may take a gradient mask per parameter (same shape, 1 = train, 0 = keep): the whole update, weight
/// decay included, is multiplied by it, so an entry whose mask is 0 keeps its exact value even when its moments are
/// not zero (a mask set in the middle of a run).</para>
/// </summary>
public sealed class AdamWOptimizer : IDisposable
{
    sealed class State(Tensor firstMoment, Tensor secondMoment)
    {
        public long Steps;
        public Tensor FirstMoment { get; } = firstMoment;     // m, shaped like the parameter
        public Tensor SecondMoment { get; } = secondMoment;   // v, shaped like the parameter

        public void Dispose()
        {
            FirstMoment.Dispose();
            SecondMoment.Dispose();
        }
    }

    readonly Dictionary<Parameter, State> _state = new(ReferenceEqualityComparer.Instance);

    /// <param name="beta1">Decay of the first moment (PyTorch's default 0.9).</param>
    /// <param name="beta2">Decay of the second moment (PyTorch's and TorchSharp 0.107's default 0.999).</param>
    /// <param name="epsilon">Added to the square root of the second moment (1e-8, as PyTorch).</param>
    public AdamWOptimizer(double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8)
    {
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "AdamW's beta1 must be in [0, 1), e.g. 0.9.");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "AdamW's beta2 must be in [0, 1), e.g. 0.999.");
        if (!(epsilon > 0 && double.IsFinite(epsilon))) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "AdamW's epsilon must be positive and finite, e.g. 1e-8.");
        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
    }

    public double Beta1 { get; }

    public double Beta2 { get; }

    public double Epsilon { get; }

    /// <summary>How many parameters have optimizer state.</summary>
    public int Count => _state.Count;

    /// <summary>How many updates <paramref name="parameter"/> has had since its state was created (0: none yet).</summary>
    public long StepsOf(Parameter parameter) => _state.TryGetValue(parameter, out var state) ? state.Steps : 0;

    /// <summary>
    /// One update of every parameter in <paramref name="parameters"/> that has a gradient (a parameter whose
    /// <c>.grad</c> is undefined is skipped, as in PyTorch). <paramref name="maskOf"/> gives a parameter's gradient mask
    /// or null. The gradients must already hold this step's values (and be masked: the mask here only guards the
    /// update). Temporaries are freed before it returns; the moments live until <see cref="Forget"/> or
    /// <see cref="Dispose"/>. <paramref name="learningRateScaleOf"/> gives a factor in [0, 1] on one parameter's learning
    /// rate (weight decay included), as a PyTorch param group with its own lr: IncreLoRA's restart warm-up of the
    /// components it adds during training; null or 1 leaves the rate as it is.
    /// </summary>
    public void Step(IEnumerable<Parameter> parameters, double learningRate, double weightDecay = 0, Func<Parameter, Tensor?>? maskOf = null,
                     Func<Parameter, double>? learningRateScaleOf = null)
    {
        if (!(learningRate >= 0 && double.IsFinite(learningRate))) throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "The learning rate must be finite and not negative.");
        if (!(weightDecay >= 0 && double.IsFinite(weightDecay))) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "The weight decay must be finite and not negative.");
        using var noGrad = no_grad();
        foreach (var parameter in parameters)
        {
            using var scope = NewDisposeScope();
            var grad = parameter.grad;
            if (grad is null) continue;
            double lr = learningRate * (learningRateScaleOf?.Invoke(parameter) ?? 1.0);
            if (!_state.TryGetValue(parameter, out var state))
            {
                state = new State(zeros_like(parameter).DetachFromDisposeScope(), zeros_like(parameter).DetachFromDisposeScope());
                _state[parameter] = state;
            }
            state.Steps++;
            double biasCorrection1 = 1 - Math.Pow(Beta1, state.Steps);
            double biasCorrection2 = 1 - Math.Pow(Beta2, state.Steps);
            state.FirstMoment.mul_(Beta1).add_(grad, alpha: 1 - Beta1);
            state.SecondMoment.mul_(Beta2).addcmul_(grad, grad, value: 1 - Beta2);
            var denominator = (state.SecondMoment.sqrt() / Math.Sqrt(biasCorrection2)).add_(Epsilon);
            double stepSize = lr / biasCorrection1;

            var mask = maskOf?.Invoke(parameter);
            if (mask is null)
            {
                parameter.mul_(1 - lr * weightDecay);
                parameter.addcdiv_(state.FirstMoment, denominator, value: -stepSize);
            }
            else
            {
                // update = lr·λ·p + stepSize·m / denominator, then p ← p − update ⊙ mask: a 0 in the mask leaves p exact.
                var update = (state.FirstMoment / denominator).mul_(stepSize);
                if (weightDecay > 0) update.add_(parameter, alpha: lr * weightDecay);
                parameter.sub_(update.mul_(mask));
            }
        }
    }

    /// <summary>Drops the state of every parameter not in <paramref name="keep"/> and returns how many were dropped:
    /// a parameter that left the trainable set and comes back later starts afresh, like a new one.</summary>
    public int Forget(IEnumerable<Parameter> keep)
    {
        var kept = new HashSet<Parameter>(keep, ReferenceEqualityComparer.Instance);
        var gone = _state.Keys.Where(p => !kept.Contains(p)).ToList();
        foreach (var parameter in gone)
        {
            _state[parameter].Dispose();
            _state.Remove(parameter);
        }
        return gone.Count;
    }

    public void Dispose() => Forget([]);
}

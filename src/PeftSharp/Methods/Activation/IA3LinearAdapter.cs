using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// (IA)³ on a Linear layer (Liu et al. 2022, §3.3): y = l ⊙ (W x + b) with <c>ia3_l</c> (out, 1), or, for a
/// feed-forward module, y = W (l ⊙ x) + b with <c>ia3_l</c> (1, in). Merging scales W's rows (and b) or W's columns,
/// as PEFT's <c>IA3Layer.merge</c> does.
/// </summary>
public sealed class IA3LinearAdapter : AdapterModule
{
    readonly Parameter ia3_l;

    public IA3LinearAdapter(Tensor baseWeight, bool feedforward, bool randomInit) : base(nameof(IA3LinearAdapter))
    {
        IsFeedforward = feedforward;
        long[] shape = feedforward ? [1, baseWeight.shape[1]] : [baseWeight.shape[0], 1];
        ia3_l = new Parameter(randomInit ? randn(shape, dtype: baseWeight.dtype, device: baseWeight.device)
                                         : ones(shape, dtype: baseWeight.dtype, device: baseWeight.device));
        register_parameter("ia3_l", ia3_l);
    }

    public override string MethodName => "ia3";

    public bool IsFeedforward { get; }

    /// <summary>The scaling vector, (out, 1) or (1, in).</summary>
    public Parameter Scale => ia3_l;

    public override bool CanMerge => true;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        if (!IsFeedforward) return result * ia3_l.flatten();                                   // (..., out)
        // W (l ⊙ x) + b = result + W ((l − 1) ⊙ x)
        return result.add_(functional.linear(x * (ia3_l.flatten() - 1), BaseWeight(baseLayer)));
    }

    public override Tensor? TryFusedForward(Tensor x, Module<Tensor, Tensor> baseLayer) =>
        IsFeedforward ? baseLayer.call(x * ia3_l.flatten()) : null;

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (BaseWeight(baseLayer) * ia3_l).MoveToOuterDisposeScope();   // (out, in) ⊙ (out, 1) scales rows; ⊙ (1, in) scales columns
    }

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        base.Merge(baseLayer, mergedWeight);
        using var scope = NewDisposeScope();
        if (!IsFeedforward && baseLayer.get_parameter("bias") is { } bias)
            using (no_grad()) bias.mul_(ia3_l.flatten());
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        BaseWeight(baseLayer).div_(ia3_l);
        if (!IsFeedforward && baseLayer.get_parameter("bias") is { } bias) bias.div_(ia3_l.flatten());
    }

    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        return (weight * ia3_l - weight).MoveToOuterDisposeScope();
    }
}

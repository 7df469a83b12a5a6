using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// DoRA (Liu et al. 2024, eq. 5): W' = m · (W + s B A) / ‖W + s B A‖, the norm taken per output row and treated
/// as a constant in backpropagation (sec. 4.3), m initialised to that norm. As in PEFT's DoraLinearLayer the
/// output is computed as result + (m/‖·‖ − 1) · W x + (m/‖·‖) · s B A x. File key: <c>lora_magnitude_vector</c> [out].
/// </summary>
public sealed class DoraLinearAdapter : LoraLinearAdapter
{
    readonly Parameter lora_magnitude_vector;
    Tensor? _mergeFactor;   // m / ‖W + s B A‖ at merge time, (out): what unmerging divides by

    public DoraLinearAdapter(int r, double scaling, double dropout, bool loraBias, Tensor baseWeight, LoraInit? init)
        : base(r, scaling, dropout, loraBias, baseWeight, init)
    {
        using (no_grad())
        {
            // With PiSSA/OLoRA the base will hold the residual, and residual + s B A = W, so ‖W‖ is right either way.
            using var norm = WeightNorm(baseWeight);
            lora_magnitude_vector = new Parameter(norm.clone());
        }
        register_parameter("lora_magnitude_vector", lora_magnitude_vector);
    }

    public override string MethodName => "dora";

    /// <summary>DoRA rescales the base output too: not a plain low-rank product.</summary>
    public override LowRankForm? LowRank => null;

    public Parameter Magnitude => lora_magnitude_vector;

    // ‖W + s B A‖ per row, (out), without gradient (DoRA sec. 4.3).
    Tensor WeightNorm(Tensor weight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return linalg.norm(B.matmul(A).mul_(Scaling).add_(weight), dims: [1]).MoveToOuterDisposeScope();
    }

    /// <summary>DoRA has no fused form: the magnitude rescales the base output too.</summary>
    public override Tensor? TryFusedForward(Tensor x, Module<Tensor, Tensor> baseLayer) => null;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var weight = BaseWeight(baseLayer);
        var input = lora_dropout is null ? x : lora_dropout.call(x);
        var magnitudeScale = lora_magnitude_vector / WeightNorm(weight);           // (out), gradient to m only
        var loraResult = LoraLinearFunction.LowRank(input, A, B, 1);             // (..., out): B A x
        // Without dropout the base term is the output so far minus the bias (PEFT does the same); with dropout the
        // base must see the dropped input.
        var bias = baseLayer.get_parameter("bias");
        var baseResult = lora_dropout is null ? (bias is null ? result : result - bias) : functional.linear(input, weight);
        return result + (magnitudeScale - 1) * baseResult + magnitudeScale * loraResult * Scaling;
    }

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        var factor = lora_magnitude_vector / WeightNorm(weight);
        var lora = B.matmul(A).mul_(Scaling);
        return (factor.unsqueeze(1) * (weight + lora)).MoveToOuterDisposeScope();
    }

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _mergeFactor?.Dispose();
        _mergeFactor = (lora_magnitude_vector / WeightNorm(BaseWeight(baseLayer))).DetachFromDisposeScope();
        BaseWeight(baseLayer).copy_(mergedWeight);
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        if (_mergeFactor is null) throw new InvalidOperationException("DoRA adapter is not merged.");
        using (NewDisposeScope())
        using (no_grad())
        {
            var weight = BaseWeight(baseLayer);
            var lora = B.matmul(A).mul_(Scaling);
            weight.copy_(weight / _mergeFactor.unsqueeze(1) - lora);
        }
        _mergeFactor.Dispose();
        _mergeFactor = null;
    }

    /// <summary>The effective change W' − W (not low rank: the magnitude rescales every row).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (MergedWeight(baseLayer) - BaseWeight(baseLayer)).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _mergeFactor?.Dispose();
        base.Dispose(disposing);
    }
}

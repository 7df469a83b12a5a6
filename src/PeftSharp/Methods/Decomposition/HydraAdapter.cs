using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// Hydra on a Linear layer (see <see cref="HydraConfig"/>): result += s·B_p (A_p x) + s·B_s (A_s (W x)), W x without the
/// bias. Tensors: <c>hydra_A_p</c> (r, in), <c>hydra_B_p</c> (out, r), <c>hydra_A_s</c> (r, out), <c>hydra_B_s</c>
/// (out, r); A Kaiming-uniform (a = √5, as LoRA's A), B = 0. ΔW = s(B_p A_p + B_s A_s W) depends on W, so a merge keeps
/// the weight it replaced and unmerging restores it exactly.
/// </summary>
public sealed class HydraAdapter : WeightDeltaAdapter
{
    readonly Parameter? hydra_A_p, hydra_B_p, hydra_A_s, hydra_B_s;

    public HydraAdapter(int r, double scaling, bool parallel, bool sequential, Tensor baseWeight) : base(nameof(HydraAdapter))
    {
        R = r;
        Scaling = scaling;
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        Parameter A(long fanIn)
        {
            var a = new Parameter(empty(r, fanIn, dtype: dtype, device: device));
            using (no_grad()) init.kaiming_uniform_(a, a: Math.Sqrt(5));
            return a;
        }
        if (parallel)
        {
            hydra_A_p = A(inFeatures);
            hydra_B_p = new Parameter(zeros(outFeatures, r, dtype: dtype, device: device));
            register_parameter("hydra_A_p", hydra_A_p);
            register_parameter("hydra_B_p", hydra_B_p);
        }
        if (sequential)
        {
            hydra_A_s = A(outFeatures);
            hydra_B_s = new Parameter(zeros(outFeatures, r, dtype: dtype, device: device));
            register_parameter("hydra_A_s", hydra_A_s);
            register_parameter("hydra_B_s", hydra_B_s);
        }
    }

    public override string MethodName => "hydra";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>s = alpha / r.</summary>
    public double Scaling { get; }

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        if (hydra_A_p is not null)
            result.add_(functional.linear(functional.linear(x, hydra_A_p).mul_(Scaling), hydra_B_p!));                    // (..., out)
        if (hydra_A_s is not null)
        {
            var wx = functional.linear(x, BaseWeight(baseLayer));                                                        // (..., out), no bias
            result.add_(functional.linear(functional.linear(wx, hydra_A_s).mul_(Scaling), hydra_B_s!));
        }
        return result;
    }

    /// <summary>ΔW = s(B_p A_p + B_s A_s W) (out, in), with W the layer's current base weight.</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        var delta = zeros_like(weight);
        if (hydra_A_p is not null) delta.add_(hydra_B_p!.matmul(hydra_A_p));
        if (hydra_A_s is not null) delta.add_(hydra_B_s!.matmul(hydra_A_s.matmul(weight)));
        return delta.mul_(Scaling).MoveToOuterDisposeScope();
    }

    // dW reads W (the sequential branch / W·T): the base class keeps W at merge and restores it at unmerge.
    protected override bool DeltaReadsBaseWeight => true;
}

using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// Transformed LoRA on a Linear layer (see <see cref="TransformedLoraConfig"/>): result += W (ΔT x) + s·B (A x), with
/// ΔT x = vec(Σ_k G¹_k X G²_kᵀ) for x read as X (d₁, d₂). Tensors: <c>tlora_G1</c> (t, d₁, d₁) ~ N(0, 1/d₁),
/// <c>tlora_G2</c> (t, d₂, d₂) = 0, <c>tlora_A</c> (r, in) Kaiming-uniform, <c>tlora_B</c> (out, r) = 0. ΔW_total =
/// W ΔT + s·B A depends on W, so a merge keeps the weight it replaced and unmerging restores it exactly.
/// </summary>
public sealed class TransformedLoraAdapter : WeightDeltaAdapter
{
    readonly Parameter tlora_G1, tlora_G2, tlora_A, tlora_B;

    /// <param name="r">The rank of B A.</param>
    /// <param name="scaling">s = alpha / r.</param>
    /// <param name="ttRank">t, the tensor-train rank of ΔT.</param>
    /// <param name="d1">The first factor of in = d₁·d₂.</param>
    /// <param name="d2">The second factor.</param>
    /// <param name="baseWeight">The base weight (out, in): shapes, dtype and device.</param>
    public TransformedLoraAdapter(int r, double scaling, int ttRank, int d1, int d2, Tensor baseWeight) : base(nameof(TransformedLoraAdapter))
    {
        R = r;
        Scaling = scaling;
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        tlora_G1 = new Parameter(randn(ttRank, d1, d1, dtype: dtype, device: device).div_(Math.Sqrt(d1)));
        tlora_G2 = new Parameter(zeros(ttRank, d2, d2, dtype: dtype, device: device));
        tlora_A = new Parameter(empty(r, baseWeight.shape[1], dtype: dtype, device: device));
        using (no_grad()) init.kaiming_uniform_(tlora_A, a: Math.Sqrt(5));
        tlora_B = new Parameter(zeros(baseWeight.shape[0], r, dtype: dtype, device: device));
        register_parameter("tlora_G1", tlora_G1);
        register_parameter("tlora_G2", tlora_G2);
        register_parameter("tlora_A", tlora_A);
        register_parameter("tlora_B", tlora_B);
    }

    public override string MethodName => "transformed-lora";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>s = alpha / r.</summary>
    public double Scaling { get; }

    /// <summary>ΔT = Σ_k G¹_k ⊗ G²_k (in, in).</summary>
    public Tensor TransformDelta()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return KroneckerSpectrum.Compose(tlora_G1, tlora_G2).MoveToOuterDisposeScope();
    }

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        result.add_(functional.linear(KroneckerSpectrum.Apply(x, tlora_G1, tlora_G2), BaseWeight(baseLayer)));   // W ΔT x, (..., out)
        return result.add_(functional.linear(functional.linear(x, tlora_A).mul_(Scaling), tlora_B));           // s·B A x
    }

    /// <summary>W ΔT + s·B A (out, in), with W the layer's current base weight.</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        return weight.matmul(KroneckerSpectrum.Compose(tlora_G1, tlora_G2)).add_(tlora_B.matmul(tlora_A), alpha: Scaling).MoveToOuterDisposeScope();
    }

    // dW reads W (the sequential branch / W·T): the base class keeps W at merge and restores it at unmerge.
    protected override bool DeltaReadsBaseWeight => true;
}

using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SoKA on a Linear layer (see <see cref="SokaConfig"/>): y = W x + (Σ_k A_k ⊗ B_k − Σ_k A⁰_k ⊗ B⁰_k) x, computed without
/// forming the Kronecker products: with x read as X (n₁, n₂), (A ⊗ B) x = vec(A X Bᵀ). The base weight is not rewritten
/// (the same function as the frozen residual plus the trained terms). Tensors: <c>soka_A</c> (K, m₁, n₁) and
/// <c>soka_B</c> (K, m₂, n₂) train; <c>soka_A0</c>, <c>soka_B0</c> are their frozen starting values.
/// </summary>
public sealed class SokaAdapter : WeightDeltaAdapter
{
    readonly Parameter soka_A, soka_B;
    readonly Tensor soka_A0, soka_B0;

    /// <param name="terms">K.</param>
    /// <param name="m1">Rows of each A_k.</param>
    /// <param name="n1">Columns of each A_k.</param>
    /// <param name="baseWeight">The base weight (out, in): shapes, dtype and device.</param>
    /// <param name="weight64">The base weight in float64 to decompose, or null when the values come from a file.</param>
    public SokaAdapter(int terms, int m1, int n1, Tensor baseWeight, Tensor? weight64) : base(nameof(SokaAdapter))
    {
        Terms = terms;
        int m2 = (int)(baseWeight.shape[0] / m1), n2 = (int)(baseWeight.shape[1] / n1);
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        using (var scope = NewDisposeScope())
        {
            var (a, b) = weight64 is null ? (zeros(terms, m1, n1), zeros(terms, m2, n2)) : KroneckerSpectrum.Decompose(weight64, m1, n1, terms);
            soka_A0 = a.to(dtype, device).contiguous().DetachFromDisposeScope();
            soka_B0 = b.to(dtype, device).contiguous().DetachFromDisposeScope();
            soka_A = new Parameter(soka_A0.clone().DetachFromDisposeScope());
            soka_B = new Parameter(soka_B0.clone().DetachFromDisposeScope());
        }
        register_parameter("soka_A", soka_A);
        register_parameter("soka_B", soka_B);
        register_buffer("soka_A0", soka_A0);
        register_buffer("soka_B0", soka_B0);
    }

    public override string MethodName => "soka";

    /// <summary>K, the number of Kronecker terms.</summary>
    public int Terms { get; }

    public override int? Rank => Terms;

    /// <summary>A (K, m₁, n₁).</summary>
    public Parameter A => soka_A;

    /// <summary>B (K, m₂, n₂).</summary>
    public Parameter B => soka_B;

    // One weight-sized ΔW and one linear per call: applying the K terms to every row instead (KroneckerSpectrum.Apply,
    // N·K small products) made a SoKA training step on the tiny ViT several times slower than LoRA's.
    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.add_(functional.linear(x, TrainableDelta()));                                                  // (..., out)

    /// <summary>ΔW with gradients: R(ΔW) = vec(A)ᵀ vec(B) − vec(A⁰)ᵀ vec(B⁰), (m₁·n₁, K)(K, m₂·n₂) each, un-rearranged
    /// to (out, in); no K-fold intermediate.</summary>
    Tensor TrainableDelta()
    {
        using var scope = NewDisposeScope();
        long k = Terms;
        int m1 = (int)soka_A.shape[1], n1 = (int)soka_A.shape[2], m2 = (int)soka_B.shape[1], n2 = (int)soka_B.shape[2];
        var rearranged = soka_A.reshape(k, -1).t().matmul(soka_B.reshape(k, -1)) - soka_A0.reshape(k, -1).t().matmul(soka_B0.reshape(k, -1));
        return KroneckerSpectrum.Unrearrange(rearranged, m1, n1, m2, n2).MoveToOuterDisposeScope();
    }

    /// <summary>ΔW = Σ_k A_k ⊗ B_k − Σ_k A⁰_k ⊗ B⁰_k (out, in).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (KroneckerSpectrum.Compose(soka_A, soka_B) - KroneckerSpectrum.Compose(soka_A0, soka_B0)).MoveToOuterDisposeScope();
    }
}

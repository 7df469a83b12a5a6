using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SORSA on a Linear layer (see <see cref="SorsaConfig"/>): y = W_r x + U_p diag(s_p) V_pᵀ x with W_r = W − U₀ diag(s₀) V₀ᵀ.
/// The base weight is not rewritten: the layer computes W x + (U_p diag(s_p) V_pᵀ − U₀ diag(s₀) V₀ᵀ) x, the same
/// function, so the base stays the original model, the adapter is exactly the identity at init (the two products are
/// the same numbers) and a merge writes W + ΔW. Tensors: <c>sorsa_U</c> (out, r), <c>sorsa_S</c> (r), <c>sorsa_V</c>
/// (r, in) train; <c>sorsa_U0</c>, <c>sorsa_S0</c>, <c>sorsa_V0</c> are their frozen starting values (saved, so a file
/// is self-contained).
/// </summary>
public sealed class SorsaAdapter : WeightDeltaAdapter
{
    readonly Parameter sorsa_U, sorsa_S, sorsa_V;
    readonly Tensor sorsa_U0, sorsa_S0, sorsa_V0;

    /// <param name="r">The rank.</param>
    /// <param name="baseWeight">The base weight (out, in): shapes, dtype and device.</param>
    /// <param name="weight64">The base weight in float64 to decompose, or null when the values come from a file.</param>
    public SorsaAdapter(int r, Tensor baseWeight, Tensor? weight64) : base(nameof(SorsaAdapter))
    {
        R = r;
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        using (var scope = NewDisposeScope())
        {
            Tensor u, s, v;
            if (weight64 is null) (u, s, v) = (zeros(outFeatures, r), zeros(r), zeros(r, inFeatures));
            else
            {
                var (uu, ss, vh) = linalg.svd(weight64, fullMatrices: false);
                (u, s, v) = (uu[.., ..r], ss[..r], vh[..r]);
            }
            sorsa_U0 = u.to(dtype, device).contiguous().DetachFromDisposeScope();
            sorsa_S0 = s.to(dtype, device).contiguous().DetachFromDisposeScope();
            sorsa_V0 = v.to(dtype, device).contiguous().DetachFromDisposeScope();
            sorsa_U = new Parameter(sorsa_U0.clone().DetachFromDisposeScope());
            sorsa_S = new Parameter(sorsa_S0.clone().DetachFromDisposeScope());
            sorsa_V = new Parameter(sorsa_V0.clone().DetachFromDisposeScope());
        }
        register_parameter("sorsa_U", sorsa_U);
        register_parameter("sorsa_S", sorsa_S);
        register_parameter("sorsa_V", sorsa_V);
        register_buffer("sorsa_U0", sorsa_U0);
        register_buffer("sorsa_S0", sorsa_S0);
        register_buffer("sorsa_V0", sorsa_V0);
    }

    public override string MethodName => "sorsa";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>U_p (out, r).</summary>
    public Parameter U => sorsa_U;

    /// <summary>s_p (r).</summary>
    public Parameter S => sorsa_S;

    /// <summary>V_pᵀ (r, in).</summary>
    public Parameter V => sorsa_V;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var current = DecompositionInit.Project(DecompositionInit.Project(x, sorsa_V) * sorsa_S, sorsa_U);       // (..., out)
        var initial = DecompositionInit.Project(DecompositionInit.Project(x, sorsa_V0) * sorsa_S0, sorsa_U0);
        return result.add_(current.sub_(initial));
    }

    /// <summary>ΔW = U_p diag(s_p) V_pᵀ − U₀ diag(s₀) V₀ᵀ (out, in).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return ((sorsa_U * sorsa_S).matmul(sorsa_V) - (sorsa_U0 * sorsa_S0).matmul(sorsa_V0)).MoveToOuterDisposeScope();
    }

    /// <summary>‖U_pᵀ U_p − I‖_F + ‖V_pᵀ V_p − I‖_F (V_pᵀ stored (r, in), so the second is ‖V V ᵀ − I‖ of the stored
    /// matrix): a scalar with gradients, 0 at init (the singular vectors are orthonormal).</summary>
    public Tensor OrthonormalPenalty()
    {
        using var scope = NewDisposeScope();
        var eye = torch.eye(R, dtype: sorsa_U.dtype, device: sorsa_U.device);
        var penalty = (sorsa_U.t().matmul(sorsa_U) - eye).norm() + (sorsa_V.matmul(sorsa_V.t()) - eye).norm();
        return penalty.MoveToOuterDisposeScope();
    }
}

using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SVFit on a Linear layer (see <see cref="SvfitConfig"/>): y = W x + U_r diag(s − s₀) V_rᵀ x. The base weight is not
/// rewritten (W x + ΔW x is the same function as the paper's U_r diag(s) V_rᵀ x + residual). Tensors: <c>svfit_s</c>
/// (r) trains; <c>svfit_U</c> (out, r), <c>svfit_V</c> (r, in) (= V_rᵀ) and <c>svfit_s0</c> (r) are frozen and saved.
/// </summary>
public sealed class SvfitAdapter : WeightDeltaAdapter
{
    readonly Parameter svfit_s;
    readonly Tensor svfit_U, svfit_V, svfit_s0;

    /// <param name="r">The rank.</param>
    /// <param name="baseWeight">The base weight (out, in): shapes, dtype and device.</param>
    /// <param name="weight64">The base weight in float64 to decompose, or null when the values come from a file.</param>
    public SvfitAdapter(int r, Tensor baseWeight, Tensor? weight64) : base(nameof(SvfitAdapter))
    {
        R = r;
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        using (var scope = NewDisposeScope())
        {
            Tensor u, s, v;
            if (weight64 is null) (u, s, v) = (zeros(baseWeight.shape[0], r), zeros(r), zeros(r, baseWeight.shape[1]));
            else
            {
                var (uu, ss, vh) = linalg.svd(weight64, fullMatrices: false);
                (u, s, v) = (uu[.., ..r], ss[..r], vh[..r]);
            }
            svfit_U = u.to(dtype, device).contiguous().DetachFromDisposeScope();
            svfit_V = v.to(dtype, device).contiguous().DetachFromDisposeScope();
            svfit_s0 = s.to(dtype, device).contiguous().DetachFromDisposeScope();
            svfit_s = new Parameter(svfit_s0.clone().DetachFromDisposeScope());
        }
        register_parameter("svfit_s", svfit_s);
        register_buffer("svfit_U", svfit_U);
        register_buffer("svfit_V", svfit_V);
        register_buffer("svfit_s0", svfit_s0);
    }

    public override string MethodName => "svfit";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>The trained singular values s (r).</summary>
    public Parameter SingularValues => svfit_s;

    /// <summary>The singular values at init, s₀ (r).</summary>
    public Tensor InitialSingularValues => svfit_s0;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.add_(DecompositionInit.Project(DecompositionInit.Project(x, svfit_V) * (svfit_s - svfit_s0), svfit_U));   // (..., out)

    /// <summary>ΔW = U_r diag(s − s₀) V_rᵀ (out, in).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (svfit_U * (svfit_s - svfit_s0)).matmul(svfit_V).MoveToOuterDisposeScope();
    }
}

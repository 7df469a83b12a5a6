using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// LoLDU on a Linear layer (see <see cref="LolduConfig"/>): y = W x + P L_r diag(s·z − D_r) U_r x. The base weight is not
/// rewritten (the same function as W_res + s·P L_r diag(z) U_r). Tensors: <c>loldu_z</c> (r) and <c>loldu_scale</c> (1)
/// train; <c>loldu_L</c> (out, r) = P L_r (rows already permuted), <c>loldu_U</c> (r, in) = U_r and <c>loldu_d0</c> (r) =
/// D_r are frozen and saved.
/// </summary>
public sealed class LolduAdapter : WeightDeltaAdapter
{
    readonly Parameter loldu_z, loldu_scale;
    readonly Tensor loldu_L, loldu_U, loldu_d0;

    /// <param name="r">The rank.</param>
    /// <param name="baseWeight">The base weight (out, in): shapes, dtype and device.</param>
    /// <param name="weight64">The base weight in float64 to factorise, or null when the values come from a file.</param>
    /// <param name="path">The layer, for error messages.</param>
    public LolduAdapter(int r, Tensor baseWeight, Tensor? weight64, string path = "") : base(nameof(LolduAdapter))
    {
        R = r;
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        using (var scope = NewDisposeScope())
        {
            Tensor lp, ur, d;
            if (weight64 is null) (lp, ur, d) = (zeros(baseWeight.shape[0], r), zeros(r, baseWeight.shape[1]), zeros(r));
            else
            {
                var (p, l, u) = linalg.lu(weight64);                  // p (out, out), l (out, k) unit lower, u (k, in) upper
                d = u.diagonal()[..r];                                // the first r pivots
                var smallest = d.abs().min().item<double>();
                if (smallest <= 1e-12 * Math.Max(1, u.diagonal().abs().max().item<double>()))
                    throw new ArgumentException(
                        $"LoLDU: the weight of '{path}' has a zero pivot among its first {r} LU steps (it is rank-deficient there), so D_r cannot be split off; choose a smaller r.");
                lp = p.matmul(l[.., ..r]);                            // P L_r (out, r)
                ur = u[..r] / d.unsqueeze(1);                         // U_r, unit upper rows (r, in)
            }
            loldu_L = lp.to(dtype, device).contiguous().DetachFromDisposeScope();
            loldu_U = ur.to(dtype, device).contiguous().DetachFromDisposeScope();
            loldu_d0 = d.to(dtype, device).contiguous().DetachFromDisposeScope();
            loldu_z = new Parameter(loldu_d0.clone().DetachFromDisposeScope());
            loldu_scale = new Parameter(ones(1, dtype: dtype, device: device).DetachFromDisposeScope());
        }
        register_parameter("loldu_z", loldu_z);
        register_parameter("loldu_scale", loldu_scale);
        register_buffer("loldu_L", loldu_L);
        register_buffer("loldu_U", loldu_U);
        register_buffer("loldu_d0", loldu_d0);
    }

    public override string MethodName => "loldu";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>z (r), the trained diagonal.</summary>
    public Parameter Diagonal => loldu_z;

    /// <summary>s, the trained scalar (1).</summary>
    public Parameter Scale => loldu_scale;

    /// <summary>D_r (r): the pivots the diagonal started from.</summary>
    public Tensor InitialDiagonal => loldu_d0;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.add_(DecompositionInit.Project(DecompositionInit.Project(x, loldu_U) * (loldu_z * loldu_scale - loldu_d0), loldu_L));   // (..., out)

    /// <summary>ΔW = P L_r diag(s·z − D_r) U_r (out, in).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (loldu_L * (loldu_z * loldu_scale - loldu_d0)).matmul(loldu_U).MoveToOuterDisposeScope();
    }
}

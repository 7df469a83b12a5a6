using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>
/// The Kronecker "rule" matrices A_1..A_n (n × n each, one (n, n, n) tensor <c>phm_rule</c>) that every PHM layer of a
/// Compacter adapter shares (Mahabadi et al. 2021, §3.2: "A_i are shared across all adapter layers"). Lives at the
/// model level (<see cref="ModelAdapter"/>) so it is one tensor, trained and saved once (key
/// <c>base_model.model.phm_rule</c>).
/// </summary>
public sealed class PhmRule : ModelAdapter
{
    readonly Parameter phm_rule;

    public PhmRule(int n, double initRange, bool initialize, Device device) : base(nameof(PhmRule))
    {
        phm_rule = new Parameter(initialize ? normal(0, initRange, [n, n, n], device: device) : zeros(n, n, n, device: device));
        register_parameter("phm_rule", phm_rule);
    }

    public override string MethodName => "compacter";

    /// <summary>(n, n, n): A_i = Rule[i].</summary>
    public Parameter Rule => phm_rule;
}

/// <summary>
/// A parameterised-hypercomplex-multiplication layer (Zhang et al. 2021; Compacter, Mahabadi et al. 2021, Eq. 4-5):
/// y = x W + b with W = Σ_{i=1}^{n} A_i ⊗ B_i ∈ R^{k×d}, A_i ∈ R^{n×n} (the shared <see cref="PhmRule"/> or this layer's
/// own <c>phm_rule</c>) and B_i = s_i t_iᵀ ∈ R^{(k/n)×(d/n)} low-rank: <c>W_left</c> (n, k/n, r) and <c>W_right</c>
/// (n, r, d/n). Rank-1 B_i give n(k/n + d/n) = k + d weights instead of k·d.
/// </summary>
public sealed class PhmLinear : Module<Tensor, Tensor>
{
    readonly Parameter W_left;
    readonly Parameter W_right;
    readonly Parameter? b;
    readonly Parameter? phm_rule;
    // The shared rule is reached through a delegate: a field of a Module type would be registered as a child
    // (TorchSharp registers Module-typed fields), duplicating the shared tensor under every layer.
    readonly Func<Parameter>? _sharedRule;

    public PhmLinear(long inFeatures, long outFeatures, int n, int rank, bool bias, PhmRule? shared, double initRange, ScalarType dtype, Device device)
        : base(nameof(PhmLinear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        N = n;
        W_left = new Parameter(empty(n, inFeatures / n, rank, dtype: dtype, device: device));
        W_right = new Parameter(empty(n, rank, outFeatures / n, dtype: dtype, device: device));
        register_parameter("W_left", W_left);
        register_parameter("W_right", W_right);
        if (bias)
        {
            b = new Parameter(zeros(outFeatures, dtype: dtype, device: device));
            register_parameter("b", b);
        }
        _sharedRule = shared is null ? null : () => shared.Rule;
        if (shared is null)
        {
            phm_rule = new Parameter(normal(0, initRange, [n, n, n], dtype: dtype, device: device));
            register_parameter("phm_rule", phm_rule);
        }
        GlorotUniform(zeroRight: false);
    }

    public long InFeatures { get; }

    public long OutFeatures { get; }

    public int N { get; }

    /// <summary>Glorot-uniform for each slice of W_left and W_right (AdapterHub's "glorot-uniform"); with
    /// <paramref name="zeroRight"/> W_right starts at 0, so the layer outputs its bias only (identity-at-init adapters).</summary>
    public void GlorotUniform(bool zeroRight)
    {
        using var scope = NewDisposeScope();   // in-place initialisers hand back wrappers of the parameters
        using var _ = no_grad();
        for (int i = 0; i < N; i++)
        {
            using var left = W_left[i];
            using var right = W_right[i];
            nn.init.xavier_uniform_(left);
            if (zeroRight) right.zero_();
            else nn.init.xavier_uniform_(right);
        }
    }

    /// <summary>W = Σ_i A_i ⊗ (W_left[i] · W_right[i]), (k, d).</summary>
    public Tensor Weight()
    {
        var rule = (_sharedRule?.Invoke() ?? phm_rule)!;                                        // (n, n, n)
        var blocks = W_left.bmm(W_right);                                                // (n, k/n, d/n)
        // kron(A, B)[a·p + c, b·q + d] = A[a, b] B[c, d], summed over i.
        return einsum("iab,icd->acbd", rule.to(blocks.dtype), blocks).reshape(InFeatures, OutFeatures);
    }

    public override Tensor forward(Tensor x)                                             // (..., k) → (..., d)
    {
        using var scope = NewDisposeScope();
        var y = x.matmul(Weight());
        if (b is not null) y = y.add_(b);
        return y.MoveToOuterDisposeScope();
    }
}

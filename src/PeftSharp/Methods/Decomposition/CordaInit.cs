using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// CorDA (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for Task-Aware
/// Parameter-Efficient Fine-tuning", NeurIPS 2024: W C = U S V̂ᵀ, W = U S (V̂ᵀ C⁻¹)), as Hugging Face PEFT 0.20 computes it
/// (<c>tuners/lora/corda.py</c> <c>collect_eigens_for_layer</c>, <c>crop_corda_eigens</c>; <c>layer.py</c>
/// <c>corda_init</c>): with C the covariance of the layer's inputs (in, in), damped until inverting it is accurate
/// (C' = C + λ·mean(diag C)·I, λ = 0.01 doubled until ‖C' C'⁻¹ − I‖_F &lt; 0.05), take W C' = U S V̂ᵀ and V = (V̂ᵀ C'⁻¹)ᵀ,
/// so that W = U S Vᵀ exactly. IPM ("ipm", the paper's instruction-previewed adaptation) adapts the r largest components,
/// KPM ("kpm", knowledge-preserved) the r smallest; with S_r' = S_r / s: A = diag(√S_r') V_rᵀ (r, in),
/// B = U_r diag(√S_r') (out, r), and the base keeps W − s·B A.
/// <para>Differences from PEFT: the covariance is the engine's C = XᵀX / N over all input rows
/// (<see cref="LayerStatistics"/>), where PEFT sums XᵀX of each batch scaled by its largest value and divides by the
/// number of batches. A global scale of C does not change the damping or B A (only how √S splits between A and B);
/// PEFT's per-batch scaling weighs batches differently. The computation is in float64 (PEFT: float32).</para>
/// </summary>
public static class CordaInit
{
    /// <summary>The damped covariance C' and its inverse, with the damping λ used (PEFT's loop).</summary>
    public static (Tensor Damped, Tensor Inverse, double Damping) DampedInverse(Tensor covariance)
    {
        using var scope = NewDisposeScope();
        var c = covariance.to(ScalarType.Float64);
        double meanDiagonal = c.diagonal().mean().item<double>();
        if (!(meanDiagonal > 0) || !double.IsFinite(meanDiagonal))
            throw new ArgumentException($"The input covariance has mean diagonal {meanDiagonal}: the calibration batches gave this layer no (finite, non-zero) input, so CorDA has no context to decompose with.");
        var eye = torch.eye(c.shape[0], dtype: ScalarType.Float64);
        double damping = 0.01;
        for (int attempt = 0; attempt < 60; attempt++, damping *= 2)
        {
            var damped = c + eye * (meanDiagonal * damping);
            var inverse = linalg.inv(damped);
            if ((damped.matmul(inverse) - eye).norm().item<double>() < 0.05)
                return (damped.MoveToOuterDisposeScope(), inverse.MoveToOuterDisposeScope(), damping);
        }
        throw new ArgumentException("The input covariance could not be inverted accurately even with heavy damping; check the calibration batches for extreme values.");
    }

    /// <summary>
    /// A (r, in), B (out, r) and the residual W − s·B A (out, in) for <paramref name="weight"/> (out, in), in its dtype and
    /// device. <paramref name="method"/> is "ipm" or "kpm"; <paramref name="scaling"/> is LoRA's s.
    /// </summary>
    public static (Tensor A, Tensor B, Tensor Residual) Factors(Tensor weight, Tensor covariance, int r, double scaling, string method)
    {
        if (method is not ("ipm" or "kpm"))
            throw new ArgumentOutOfRangeException(nameof(method), method, "corda_method must be \"ipm\" (adapt the largest components) or \"kpm\" (adapt the smallest, keep knowledge).");
        if (covariance.shape[0] != weight.shape[1] || covariance.shape[1] != weight.shape[1])
            throw new ArgumentException($"The input covariance is [{string.Join(", ", covariance.shape)}] but the weight takes {weight.shape[1]} inputs; it must be [{weight.shape[1]}, {weight.shape[1]}].");
        using var scope = NewDisposeScope();
        var w = weight.detach().to(ScalarType.Float64, CPU);
        var (damped, inverse, _) = DampedInverse(covariance.to(CPU));
        var (u, s, vh) = linalg.svd(w.matmul(damped), fullMatrices: false);   // W C' = U S V̂ᵀ
        var v = vh.matmul(inverse).t();                                         // (in, k): W = U S Vᵀ
        long k = s.shape[0];
        Range take = method == "ipm" ? 0..r : (int)(k - r)..(int)k;
        var sr = s[take] / scaling;
        var root = sr.sqrt();
        var a = v[.., take].t() * root.unsqueeze(1);                            // (r, in)
        var b = u[.., take] * root.unsqueeze(0);                                // (out, r)
        var residual = w - scaling * b.matmul(a);
        if (!isfinite(a).all().item<bool>() || !isfinite(b).all().item<bool>() || !isfinite(residual).all().item<bool>())
            throw new ArgumentOutOfRangeException("lora_alpha", scaling,
                $"CorDA with r = {r} and s = {scaling:G4} gives NaN or Inf values (a non-finite base weight, or an extreme lora_alpha); the base was left unchanged.");
        return (a.to(weight.dtype, weight.device).MoveToOuterDisposeScope(), b.to(weight.dtype, weight.device).MoveToOuterDisposeScope(),
                residual.to(weight.dtype, weight.device).MoveToOuterDisposeScope());
    }
}

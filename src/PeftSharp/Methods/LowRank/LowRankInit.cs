using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>Initialisations that take A and B from a decomposition of the base weight W (out × in) and leave the
/// residual W − s·B A in the base, so the adapted layer starts exactly where the base was.</summary>
public static class LowRankInit
{
    /// <summary>
    /// PiSSA (Meng et al. 2024, eq. 2-3; PEFT <c>pissa_init</c>): W = U S Vᵀ; with S_r' = S_r / s,
    /// A = diag(√S_r') V_rᵀ (r × in), B = U_r diag(√S_r') (out × r). With <paramref name="iterations"/> the SVD is the
    /// randomised one of Halko et al. with that many subspace iterations (PEFT <c>pissa_niter_N</c>).
    /// </summary>
    public static (Tensor A, Tensor B, Tensor Residual) Pissa(Tensor weight, int r, double scaling, int? iterations = null)
    {
        using var scope = NewDisposeScope();
        var w = weight.detach().to(ScalarType.Float32);
        var (u, s, vh) = iterations is int n ? RandomizedSvd(w, r, n) : linalg.svd(w, fullMatrices: false);
        var sr = s[..r] / scaling;                       // (r)
        var sqrtS = sr.sqrt();
        var a = sqrtS.unsqueeze(1) * vh[..r];            // (r, in)
        var b = u[.., ..r] * sqrtS.unsqueeze(0);         // (out, r)
        var residual = w - scaling * b.matmul(a);        // (out, in)
        CheckFinite("PiSSA", a, b, residual, r, scaling);
        return (a.to(weight.dtype).MoveToOuterDisposeScope(), b.to(weight.dtype).MoveToOuterDisposeScope(),
                residual.to(weight.dtype).MoveToOuterDisposeScope());
    }

    /// <summary>OLoRA (Büyükakyüz 2024; PEFT <c>olora_init</c>): W = Q R; B = Q[:, :r] (out × r), A = R[:r] (r × in).</summary>
    public static (Tensor A, Tensor B, Tensor Residual) Olora(Tensor weight, int r, double scaling)
    {
        using var scope = NewDisposeScope();
        var w = weight.detach().to(ScalarType.Float32);
        var (q, rr) = linalg.qr(w);                      // q (out, k), rr (k, in), k = min(out, in)
        var b = q[.., ..r].contiguous();
        var a = rr[..r].contiguous();
        var residual = w - scaling * b.matmul(a);
        CheckFinite("OLoRA", a, b, residual, r, scaling);
        return (a.to(weight.dtype).MoveToOuterDisposeScope(), b.to(weight.dtype).MoveToOuterDisposeScope(),
                residual.to(weight.dtype).MoveToOuterDisposeScope());
    }

    // An initialisation that rewrites the base must not write NaN or Inf into it (an extreme lora_alpha, or a base that
    // already holds non-finite values): refuse before anything changes.
    static void CheckFinite(string method, Tensor a, Tensor b, Tensor residual, int r, double scaling)
    {
        using var finite = isfinite(a).all().logical_and(isfinite(b).all()).logical_and(isfinite(residual).all());
        if (!finite.item<bool>())
            throw new ArgumentOutOfRangeException("lora_alpha", scaling,
                $"{method} with r = {r} and scale s = {scaling:G4} gives NaN or Inf values (the base weight is non-finite, or lora_alpha is extreme); the base weights were left unchanged. Use a moderate lora_alpha, e.g. r or 2r.");
    }

    /// <summary>The top-<paramref name="rank"/> SVD by random projection and <paramref name="iterations"/> power
    /// iterations (Halko, Martinsson, Tropp 2011, alg. 4.4), as <c>torch.svd_lowrank</c> with q = rank.</summary>
    public static (Tensor U, Tensor S, Tensor Vh) RandomizedSvd(Tensor w, int rank, int iterations)
    {
        using var scope = NewDisposeScope();
        var omega = randn(w.shape[1], rank, dtype: w.dtype, device: w.device);   // (in, q)
        var (q, _) = linalg.qr(w.matmul(omega));                                 // (out, q)
        for (int i = 0; i < iterations; i++)
        {
            var (z, _) = linalg.qr(w.t().matmul(q));                             // (in, q)
            (q, _) = linalg.qr(w.matmul(z));                                     // (out, q)
        }
        var (ub, s, vh) = linalg.svd(q.t().matmul(w), fullMatrices: false);      // (q, q), (q), (q, in)
        var u = q.matmul(ub);
        return (u.MoveToOuterDisposeScope(), s.MoveToOuterDisposeScope(), vh.MoveToOuterDisposeScope());
    }
}

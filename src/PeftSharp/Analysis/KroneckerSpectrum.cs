using static TorchSharp.torch;

namespace PeftSharp.Analysis;

/// <summary>
/// The nearest sums of Kronecker products to a matrix (Van Loan and Pitsianis 1993; Van Loan 2000, "The ubiquitous
/// Kronecker product", §3). A matrix W of shape (m₁·m₂, n₁·n₂), read as an m₁ × n₁ grid of (m₂ × n₂) blocks W_ij, is
/// rearranged into R(W) of shape (m₁·n₁, m₂·n₂) whose row (i, j) is vec(W_ij) (row-major). Then
/// R(Σ_k A_k ⊗ B_k) = Σ_k vec(A_k) vec(B_k)ᵀ, so the best K-term Kronecker sum in Frobenius norm comes from the top K
/// singular triplets of R(W) (KPSVD): A_k = √σ_k · reshape(u_k, m₁ × n₁), B_k = √σ_k · reshape(v_k, m₂ × n₂), and the
/// singular values of R(W) are the "Kronecker spectrum" whose energy says how many terms W needs.
/// </summary>
public static class KroneckerSpectrum
{
    /// <summary>R(W): (m₁·m₂, n₁·n₂) → (m₁·n₁, m₂·n₂), with (A ⊗ B)[i·m₂ + p, j·n₂ + q] = A[i, j]·B[p, q] as torch.kron.</summary>
    public static Tensor Rearrange(Tensor weight, int m1, int n1)
    {
        var (m2, n2) = CheckFactors(weight, m1, n1);
        using var scope = NewDisposeScope();
        return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>The inverse of <see cref="Rearrange"/>: R (m₁·n₁, m₂·n₂) back to W (m₁·m₂, n₁·n₂).</summary>
    public static Tensor Unrearrange(Tensor rearranged, int m1, int n1, int m2, int n2)
    {
        using var scope = NewDisposeScope();
        return rearranged.reshape(m1, n1, m2, n2).permute(0, 2, 1, 3).reshape(m1 * m2, n1 * n2).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>The singular values of R(<paramref name="weight"/>) for an m₁ × n₁ grid of blocks, as a
    /// <see cref="SingularSpectrum"/> (source <see cref="SpectrumSource.Kronecker"/>): its energy rank is the number of
    /// Kronecker terms needed for that share of ‖W‖_F².</summary>
    public static SingularSpectrum Of(Tensor weight, int m1, int n1, string layer = "W")
    {
        using var scope = NewDisposeScope();
        var spectrum = SingularSpectrum.Of(Rearrange(weight.detach().to(ScalarType.Float64, CPU), m1, n1), layer);
        return spectrum with { Source = SpectrumSource.Kronecker, Shape = weight.shape };
    }

    /// <summary>KPSVD: the best <paramref name="terms"/>-term approximation W ≈ Σ_k A_k ⊗ B_k, as A (K, m₁, n₁) and
    /// B (K, m₂, n₂) in the weight's dtype and device (√σ_k split evenly between the factors).</summary>
    public static (Tensor A, Tensor B) Decompose(Tensor weight, int m1, int n1, int terms)
    {
        var (m2, n2) = CheckFactors(weight, m1, n1);
        int maxTerms = (int)Math.Min((long)m1 * n1, (long)m2 * n2);
        if (terms < 1 || terms > maxTerms)
            throw new ArgumentOutOfRangeException(nameof(terms), terms, $"The number of Kronecker terms must be in [1, {maxTerms}] for a {m1} x {n1} grid of {m2} x {n2} blocks.");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var r = Rearrange(weight.detach().to(ScalarType.Float64), m1, n1);
        var (u, s, vh) = linalg.svd(r, fullMatrices: false);
        var root = s[..terms].sqrt();                                                   // (K)
        var a = (u[.., ..terms] * root).t().reshape(terms, m1, n1);                     // (K, m1, n1)
        var b = (vh[..terms] * root.unsqueeze(1)).reshape(terms, m2, n2);               // (K, m2, n2)
        return (a.to(weight.dtype).MoveToOuterDisposeScope(), b.to(weight.dtype).MoveToOuterDisposeScope());
    }

    /// <summary>Σ_k A_k ⊗ B_k for A (K, m₁, n₁) and B (K, m₂, n₂): a (m₁·m₂, n₁·n₂) matrix.</summary>
    public static Tensor Compose(Tensor a, Tensor b)
    {
        if (a.dim() != 3 || b.dim() != 3 || a.shape[0] != b.shape[0])
            throw new ArgumentException($"Compose takes A (K, m1, n1) and B (K, m2, n2) with the same K; got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        using var scope = NewDisposeScope();
        long k = a.shape[0], m1 = a.shape[1], n1 = a.shape[2], m2 = b.shape[1], n2 = b.shape[2];
        // (K, m1, 1, n1, 1) * (K, 1, m2, 1, n2) summed over K = Σ_k kron(A_k, B_k)
        var sum = (a.reshape(k, m1, 1, n1, 1) * b.reshape(k, 1, m2, 1, n2)).sum(dim: 0);
        return sum.reshape(m1 * m2, n1 * n2).MoveToOuterDisposeScope();
    }

    /// <summary>Σ_k (A_k ⊗ B_k) x for every row x (..., n₁·n₂) without forming the products: with x read as X (n₁, n₂)
    /// row-major, (A ⊗ B) x = vec(A X Bᵀ). A (K, m₁, n₁), B (K, m₂, n₂); the result is (..., m₁·m₂).</summary>
    public static Tensor Apply(Tensor x, Tensor a, Tensor b)
    {
        long n1 = a.shape[2], n2 = b.shape[2];
        var rows = x.reshape(-1, n1, n2);                                          // (N, n1, n2)
        var y = einsum("kij,njq,kpq->nip", a, rows, b);                            // (N, m1, m2)
        return y.reshape([.. x.shape[..^1], a.shape[1] * b.shape[1]]);
    }

    /// <summary>The largest divisor of <paramref name="n"/> not above √n (1 for a prime): a balanced block grid.</summary>
    public static int BalancedFactor(long n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), n, "A dimension is 1 or more.");
        for (long d = (long)Math.Sqrt(n); d >= 1; d--)
            if (n % d == 0) return (int)d;
        return 1;
    }

    static (int M2, int N2) CheckFactors(Tensor weight, int m1, int n1)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.dim() != 2)
            throw new ArgumentException($"A Kronecker rearrangement needs a matrix; got shape [{string.Join(", ", weight.shape)}].", nameof(weight));
        long rows = weight.shape[0], cols = weight.shape[1];
        if (m1 < 1 || rows % m1 != 0)
            throw new ArgumentOutOfRangeException(nameof(m1), m1, $"m1 must divide the {rows} rows (e.g. {BalancedFactor(rows)}).");
        if (n1 < 1 || cols % n1 != 0)
            throw new ArgumentOutOfRangeException(nameof(n1), n1, $"n1 must divide the {cols} columns (e.g. {BalancedFactor(cols)}).");
        return ((int)(rows / m1), (int)(cols / n1));
    }
}

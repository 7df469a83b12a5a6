using static TorchSharp.torch;

namespace PeftSharp.Analysis;

/// <summary>
/// How much two matrices share their dominant output directions: the principal angles between the top-k₁ left singular
/// subspace of A and the top-k₂ left singular subspace of B (Björck and Golub 1973). With U₁ (m × k₁) and U₂ (m × k₂) the
/// orthonormal bases, the cosines of the angles are the singular values of U₁ᵀ U₂ (min(k₁, k₂) of them, largest first),
/// and the Grassmann similarity is ‖U₁ᵀ U₂‖_F² / min(k₁, k₂) ∈ [0, 1] (the LoRA paper's φ, Hu et al. 2021 §7.2): 1 when
/// one subspace contains the other, about max(k₁, k₂) / m for random subspaces.
/// </summary>
/// <param name="RankA">k₁, the dimension of the first subspace.</param>
/// <param name="RankB">k₂, the dimension of the second.</param>
/// <param name="Cosines">cos θ_i of the principal angles, largest first (1 = a shared direction, 0 = orthogonal).</param>
/// <param name="Grassmann">‖U₁ᵀ U₂‖_F² / min(k₁, k₂).</param>
public sealed record SubspaceSimilarity(int RankA, int RankB, IReadOnlyList<double> Cosines, double Grassmann)
{
    /// <summary>The principal angles in degrees, smallest first.</summary>
    public IReadOnlyList<double> AnglesDegrees => Cosines.Select(c => Math.Acos(Math.Clamp(c, -1, 1)) * 180 / Math.PI).ToList();

    /// <summary>The similarity a random pair of subspaces of these sizes has on average in R^<paramref name="dimension"/>:
    /// E‖U₁ᵀ U₂‖_F² / min(k₁, k₂) = max(k₁, k₂) / m.</summary>
    public double RandomBaseline(long dimension) => (double)Math.Max(RankA, RankB) / dimension;

    public override string ToString() =>
        $"top-{RankA} vs top-{RankB} subspaces: Grassmann similarity {Grassmann:0.000}, cos θ = [{string.Join(", ", Cosines.Take(8).Select(c => c.ToString("0.000")))}{(Cosines.Count > 8 ? ", ..." : "")}]";

    /// <summary>The similarity of the top-<paramref name="rankA"/> left singular subspace of <paramref name="a"/> and the
    /// top-<paramref name="rankB"/> (default <paramref name="rankA"/>) one of <paramref name="b"/>. Both have the same
    /// number of rows m (the output dimension of a weight (out, in)); computed in float64 on the CPU.</summary>
    public static SubspaceSimilarity Of(Tensor a, Tensor b, int rankA, int? rankB = null)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        int kb = rankB ?? rankA;
        if (a.dim() != 2 || b.dim() != 2)
            throw new ArgumentException($"Subspace similarity compares two matrices; got shapes [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        if (a.shape[0] != b.shape[0])
            throw new ArgumentException($"The two matrices must have the same number of rows (their column spaces live in the same R^m); got {a.shape[0]} and {b.shape[0]}. " +
                                        "Compare weights or deltas of the same layer, or transpose both to compare input directions.");
        long maxA = Math.Min(a.shape[0], a.shape[1]), maxB = Math.Min(b.shape[0], b.shape[1]);
        if (rankA < 1 || rankA > maxA)
            throw new ArgumentOutOfRangeException(nameof(rankA), rankA, $"rankA must be in [1, {maxA}] for a [{a.shape[0]} x {a.shape[1]}] matrix.");
        if (kb < 1 || kb > maxB)
            throw new ArgumentOutOfRangeException(nameof(rankB), kb, $"rankB must be in [1, {maxB}] for a [{b.shape[0]} x {b.shape[1]}] matrix.");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var u1 = TopLeftSingularVectors(a, rankA);               // (m, k1)
        var u2 = TopLeftSingularVectors(b, kb);                  // (m, k2)
        var overlap = u1.t().matmul(u2);                          // (k1, k2)
        var cosines = linalg.svdvals(overlap).clamp(0, 1).data<double>().ToArray();
        double grassmann = overlap.pow(2).sum().item<double>() / Math.Min(rankA, kb);
        return new SubspaceSimilarity(rankA, kb, cosines, grassmann);
    }

    /// <summary>The first <paramref name="k"/> left singular vectors of <paramref name="matrix"/>, (m, k), float64 on the CPU.</summary>
    public static Tensor TopLeftSingularVectors(Tensor matrix, int k)
    {
        using var scope = NewDisposeScope();
        var m = matrix.detach().to(ScalarType.Float64, CPU);
        if (!isfinite(m).all().item<bool>())
            throw new ArgumentException("The matrix holds NaN or infinite values, so it has no singular vectors; check the weights or the training run.", nameof(matrix));
        var (u, _, _) = linalg.svd(m, fullMatrices: false);
        return u[.., ..k].contiguous().MoveToOuterDisposeScope();
    }
}

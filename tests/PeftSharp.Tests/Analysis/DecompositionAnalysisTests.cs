using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Analysis;

public sealed class DecompositionAnalysisTests
{
    static Tensor Orthonormal(long rows, long cols, int seed)
    {
        manual_seed(seed);
        var (q, _) = linalg.qr(randn(rows, cols, dtype: ScalarType.Float64));
        return q;
    }

    [Fact]
    public void Principal_angles_of_subspaces_with_known_overlap_are_their_cosines()
    {
        // Two 2-dimensional subspaces of R^6: one shared direction e0, and e1 against cos(t) e1 + sin(t) e2.
        double t = 0.7;
        var a = zeros(6, 4, dtype: ScalarType.Float64);
        a[0, 0] = 5.0; a[1, 1] = 3.0; a[3, 2] = 0.01;             // top-2 left subspace: span(e0, e1)
        var b = zeros(6, 3, dtype: ScalarType.Float64);
        b[0, 0] = 2.0; b[1, 1] = 4 * Math.Cos(t); b[2, 1] = 4 * Math.Sin(t);
        var s = SubspaceSimilarity.Of(a, b, 2);
        Assert.Equal(2, s.Cosines.Count);
        Assert.Equal(1.0, s.Cosines[0], 9);
        Assert.Equal(Math.Cos(t), s.Cosines[1], 9);
        Assert.Equal((1 + Math.Cos(t) * Math.Cos(t)) / 2, s.Grassmann, 9);
        Assert.Equal(t * 180 / Math.PI, s.AnglesDegrees[1], 6);
    }

    [Fact]
    public void Subspace_similarity_matches_the_direct_formula_on_random_matrices()
    {
        manual_seed(3);
        var a = randn(20, 12, dtype: ScalarType.Float64);
        var b = randn(20, 9, dtype: ScalarType.Float64);
        var s = SubspaceSimilarity.Of(a, b, 4, 3);
        var (ua, _, _) = linalg.svd(a, fullMatrices: false);
        var (ub, _, _) = linalg.svd(b, fullMatrices: false);
        var overlap = ua[.., ..4].t().matmul(ub[.., ..3]);
        Assert.Equal(overlap.pow(2).sum().item<double>() / 3, s.Grassmann, 9);
        var expected = linalg.svdvals(overlap).data<double>().ToArray();
        for (int i = 0; i < 3; i++) Assert.Equal(expected[i], s.Cosines[i], 9);
        // A matrix against itself: every angle is zero.
        Assert.All(SubspaceSimilarity.Of(a, a * 3, 5).Cosines, c => Assert.Equal(1.0, c, 9));
        Assert.Equal(4.0 / 20, s.RandomBaseline(20), 12);
    }

    [Fact]
    public void Subspace_similarity_refuses_mismatched_rows_and_ranks_naming_the_limits()
    {
        var e = Assert.Throws<ArgumentException>(() => SubspaceSimilarity.Of(ones(4, 3), ones(5, 3), 1));
        Assert.Contains("same number of rows", e.Message);
        var r = Assert.Throws<ArgumentOutOfRangeException>(() => SubspaceSimilarity.Of(ones(4, 3), ones(4, 3), 4));
        Assert.Contains("[1, 3]", r.Message);
    }

    [Fact]
    public void Magnitude_and_direction_changes_follow_the_dora_definitions()
    {
        // Row 0 doubles its length (direction kept); row 1 turns by 90 degrees (length kept).
        var w0 = tensor(new double[,] { { 1, 0 }, { 0, 2 } });
        var w1 = tensor(new double[,] { { 2, 0 }, { 2, 0 } });
        var md = MagnitudeDirection.Of(w0, w1, "toy");
        Assert.Equal((1.0 + 0.0) / 2, md.DeltaMagnitude, 12);
        Assert.Equal((0.0 + 1.0) / 2, md.DeltaDirection, 12);

        manual_seed(5);
        var a = randn(7, 5, dtype: ScalarType.Float64);
        var b = a + 0.3 * randn(7, 5, dtype: ScalarType.Float64);
        var got = MagnitudeDirection.Of(a, b);
        double dm = 0, dd = 0;
        for (int n = 0; n < 7; n++)
        {
            double na = a[n].norm().item<double>(), nb = b[n].norm().item<double>();
            dm += Math.Abs(nb - na) / 7;
            dd += (1 - (a[n] * b[n]).sum().item<double>() / (na * nb)) / 7;
        }
        Assert.Equal(dm, got.DeltaMagnitude, 10);
        Assert.Equal(dd, got.DeltaDirection, 10);
        // A uniform rescaling is pure magnitude.
        Assert.Equal(0, MagnitudeDirection.Of(a, a * 2).DeltaDirection, 12);
    }

    [Fact]
    public void Magnitude_and_direction_of_a_lora_adapter_compare_w_with_w_plus_delta()
    {
        manual_seed(2);
        var model = new Mlp(16, 32, 8);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 2, InitLoraWeights = LoraInit.Random });
        var layer = peft.Layers.Single();
        using var w = AdapterModule.BaseWeight(layer.BaseLayer).detach().clone();
        using var delta = layer["default"].DeltaWeight(layer.BaseLayer)!;
        var expected = MagnitudeDirection.Of(w, w + delta);
        var actual = MagnitudeDirection.OfAdapter(peft, "lin0");
        Assert.Equal(expected.DeltaMagnitude, actual.DeltaMagnitude, 12);
        Assert.True(actual.DeltaDirection > 0);
    }

    [Fact]
    public void Energy_rank_is_the_smallest_prefix_holding_the_threshold()
    {
        double[] values = [4, 2, 1, 0];                               // energies 16, 4, 1 of 21
        Assert.Equal(1, SpectrumMarkers.EnergyRank(values, 16.0 / 21));
        Assert.Equal(2, SpectrumMarkers.EnergyRank(values, 0.9));    // 20/21 = 0.952
        Assert.Equal(3, SpectrumMarkers.EnergyRank(values, 0.99));
        Assert.Equal(3, SpectrumMarkers.EnergyRank(values, 1.0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SpectrumMarkers.EnergyRank(values, 1.5));
        Assert.Throws<ArgumentException>(() => SpectrumMarkers.EnergyRank([1, 2], 0.5));
    }

    [Fact]
    public void The_elbow_falls_after_the_values_that_stand_out()
    {
        Assert.Equal(3, SpectrumMarkers.Elbow([10, 9.5, 9, 1, 0.9, 0.8, 0.7, 0.6]));
        Assert.Equal(1, SpectrumMarkers.Elbow([10, 1, 0.9, 0.8, 0.7, 0.6]));
        Assert.Equal(4, SpectrumMarkers.Elbow([2, 2, 2, 2]));          // flat: nothing stands out
        // A weight with a planted rank-3 part plus noise: its spectrum's elbow finds 3.
        manual_seed(4);
        var planted = randn(40, 3, dtype: ScalarType.Float64).matmul(randn(3, 30, dtype: ScalarType.Float64)) * 3
                      + 0.05 * randn(40, 30, dtype: ScalarType.Float64);
        Assert.Equal(3, SingularSpectrum.Of(planted, "planted").Elbow);
    }

    [Fact]
    public void Kronecker_rearrangement_turns_a_kronecker_product_into_a_rank_one_matrix()
    {
        manual_seed(6);
        var a = randn(3, 2, dtype: ScalarType.Float64);
        var b = randn(4, 5, dtype: ScalarType.Float64);
        var w = kron(a, b);                                             // (12, 10)
        var r = KroneckerSpectrum.Rearrange(w, 3, 2);                   // (6, 20)
        Tensors.AssertClose(a.reshape(-1, 1).matmul(b.reshape(1, -1)), r, 1e-12, "R(A ⊗ B) = vec(A) vec(B)ᵀ");
        Tensors.AssertClose(w, KroneckerSpectrum.Unrearrange(r, 3, 2, 4, 5), 0, "the inverse rearrangement");
        var spectrum = KroneckerSpectrum.Of(w, 3, 2, "w");
        Assert.Equal(SpectrumSource.Kronecker, spectrum.Source);
        Assert.Equal(1, spectrum.RankForEnergy(0.999999));
    }

    [Fact]
    public void Kpsvd_with_every_term_rebuilds_the_matrix_and_two_planted_terms_are_found()
    {
        manual_seed(8);
        var w = randn(6, 8, dtype: ScalarType.Float64);
        var (a, b) = KroneckerSpectrum.Decompose(w, 2, 4, 6);          // 2x4 grid of 3x2 blocks: R is (8, 6), 6 terms at most
        Assert.Equal([6L, 2, 4], a.shape);
        Assert.Equal([6L, 3, 2], b.shape);
        Tensors.AssertClose(w, KroneckerSpectrum.Compose(a, b), 1e-10, "all six Kronecker terms");
        var tooMany = Assert.Throws<ArgumentOutOfRangeException>(() => KroneckerSpectrum.Decompose(w, 2, 4, 7));
        Assert.Contains("[1, 6]", tooMany.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => KroneckerSpectrum.Rearrange(w, 4, 4));

        var planted = kron(randn(2, 4, dtype: ScalarType.Float64), randn(3, 2, dtype: ScalarType.Float64))
                      + kron(randn(2, 4, dtype: ScalarType.Float64), randn(3, 2, dtype: ScalarType.Float64));
        var (a2, b2) = KroneckerSpectrum.Decompose(planted, 2, 4, 2);
        Tensors.AssertClose(planted, KroneckerSpectrum.Compose(a2, b2), 1e-10, "two planted terms");
        Assert.Equal(2, KroneckerSpectrum.Of(planted, 2, 4).RankForEnergy(0.999999));
        Assert.Equal(4, KroneckerSpectrum.BalancedFactor(24));
        Assert.Equal(1, KroneckerSpectrum.BalancedFactor(7));
    }

    [Fact]
    public void Applying_kronecker_terms_to_a_batch_equals_multiplying_by_their_composed_matrix()
    {
        manual_seed(11);
        var a = randn(3, 2, 4, dtype: ScalarType.Float64);              // K = 3 terms, A_k 2 x 4
        var b = randn(3, 5, 2, dtype: ScalarType.Float64);              // B_k 5 x 2: W is (10, 8)
        var x = randn(2, 7, 8, dtype: ScalarType.Float64);              // (batch, tokens, in)
        var y = KroneckerSpectrum.Apply(x, a, b);
        Assert.Equal([2L, 7, 10], y.shape);
        Tensors.AssertClose(x.matmul(KroneckerSpectrum.Compose(a, b).t()), y, 1e-10, "Σ_k (A_k ⊗ B_k) x for every row");
    }

    [Fact]
    public void The_full_fine_tuning_delta_spectrum_is_the_spectrum_of_the_weight_difference()
    {
        manual_seed(9);
        var reference = new Mlp(16, 32, 8);
        manual_seed(9);
        var tuned = new Mlp(16, 32, 8);
        manual_seed(10);
        var u = randn(32, 1);
        var v = randn(1, 16);
        using (no_grad()) tuned.named_parameters().Single(p => p.name == "lin0.weight").parameter.add_(u.matmul(v));
        var spectrum = SingularSpectrum.OfFullDelta(tuned, reference, "lin0");
        Assert.Equal(SpectrumSource.FullDelta, spectrum.Source);
        Assert.Contains("full fine-tuning", spectrum.Title);
        Assert.Equal(u.norm().item<float>() * v.norm().item<float>(), spectrum.Values[0], 3);
        Assert.All(spectrum.Values.Skip(1), x => Assert.True(x < 1e-4, $"a rank-1 change has one singular value; got {x}"));
        var other = Assert.Throws<ArgumentException>(() => SingularSpectrum.OfFullDelta(tuned, new Mlp(16, 30, 8), "lin0"));
        Assert.Contains("same model", other.Message);
    }

    [Fact]
    public void The_magnitude_direction_scatter_gives_each_series_the_Pearson_correlation_of_its_points()
    {
        MagnitudeDirection P(double m, double d) => new("l", m, d);
        var scatter = new MagnitudeDirectionScatter("t", new Dictionary<string, IReadOnlyList<MagnitudeDirection>>
        {
            ["rising"] = [P(1, 1), P(2, 2), P(3, 3)],
            ["falling"] = [P(3, 1), P(2, 2), P(1, 3)],
            ["mixed"] = [P(1, 1), P(3, 2), P(2, 3)],
        });
        Assert.Equal(1, scatter.Correlations["rising"], 12);
        Assert.Equal(-1, scatter.Correlations["falling"], 12);
        Assert.Equal(0.5, scatter.Correlations["mixed"], 12);   // Σxy = 1 over Σxx = Σyy = 2
        Assert.True(double.IsNaN(MagnitudeDirectionScatter.Correlation([P(1, 1)])));
    }
}

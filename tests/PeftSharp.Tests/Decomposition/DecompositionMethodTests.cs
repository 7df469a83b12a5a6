using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.Decomposition;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Decomposition;

/// <summary>Each decomposition method against a direct computation of its paper's formula on the layer's own weights.</summary>
public sealed class DecompositionMethodTests
{
    static (Mlp Model, Tensor W, Tensor Bias) FreshMlp(int seed = 21)
    {
        manual_seed(seed);
        var model = new Mlp(16, 32, 8);
        var lin0 = (TorchSharp.Modules.Linear)model.named_modules().Single(m => m.name == "lin0").module;
        return (model, lin0.weight!.detach().clone().to(ScalarType.Float64), lin0.bias!.detach().clone().to(ScalarType.Float64));
    }

    static AdapterLayer Layer(PeftModel peft, string path) => peft.Layers.Single(l => l.Path == path);

    static Tensor Input(int seed = 5)
    {
        manual_seed(seed);
        return randn(6, 16);
    }

    static Tensor Out(AdapterLayer layer, Tensor x)
    {
        using var _ = no_grad();
        return layer.call(x).to(ScalarType.Float64);
    }

    static Tensor Linear64(Tensor x, Tensor w, Tensor b) => x.to(ScalarType.Float64).matmul(w.t()) + b;

    [Fact]
    public void Sorsa_starts_from_the_top_r_svd_and_computes_the_residual_plus_the_trained_principal_part()
    {
        var (model, w, b) = FreshMlp();
        var peft = PeftModel.Create(model, new SorsaConfig { TargetModules = ["lin0"], R = 3 });
        var adapter = (SorsaAdapter)Layer(peft, "lin0")["default"];
        var (u, s, vh) = linalg.svd(w, fullMatrices: false);
        Tensors.AssertClose(s[..3], adapter.S.to(ScalarType.Float64), 1e-5, "s_p = the top 3 singular values");
        Tensors.AssertClose((u[.., ..3] * s[..3]).matmul(vh[..3]), (adapter.U * adapter.S).matmul(adapter.V).to(ScalarType.Float64), 1e-5, "W_p = U_p diag(s_p) V_p");
        Assert.Equal(0, SorsaRegularizer.Deviation(peft), 4);

        Tensors.PerturbAdapters(peft, "default", 0.2);
        var x = Input();
        var residual = w - (u[.., ..3] * s[..3]).matmul(vh[..3]);
        var principal = (adapter.U * adapter.S).matmul(adapter.V).detach().to(ScalarType.Float64);
        Tensors.AssertClose(Linear64(x, residual + principal, b), Out(Layer(peft, "lin0"), x), 1e-4, "y = (W_r + U_p diag(s_p) V_p) x + b");
    }

    [Fact]
    public void Sorsas_regulariser_is_gamma_times_the_orthonormality_deviation_and_trains_through_the_loss_hook()
    {
        var (model, _, _) = FreshMlp();
        var peft = PeftModel.Create(model, new SorsaConfig { TargetModules = ["lin0", "lin1"], R = 2, Gamma = 0.5 });
        Tensors.PerturbAdapters(peft, "default", 0.3);
        double direct = 0;
        foreach (var layer in peft.Layers)
        {
            var a = (SorsaAdapter)layer["default"];
            var eye = torch.eye(2);
            direct += (a.U.t().matmul(a.U) - eye).norm().item<float>() + (a.V.matmul(a.V.t()) - eye).norm().item<float>();
        }
        Assert.Equal(direct, SorsaRegularizer.Deviation(peft), 4);

        var trainer = new Trainer();
        SorsaRegularizer.AddTo(trainer, peft);
        Assert.Equal([SorsaRegularizer.TermName], trainer.LossTerms);
        var notSorsa = PeftModel.Create(new Mlp(), new PeftSharp.Methods.LowRank.LoraConfig { TargetModules = ["lin0"] });
        var e = Assert.Throws<ArgumentException>(() => SorsaRegularizer.AddTo(new Trainer(), notSorsa));
        Assert.Contains("not SORSA", e.Message);
    }

    [Fact]
    public void Svfit_picks_r_by_cumulative_energy_and_trains_only_those_singular_values()
    {
        var (model, w, b) = FreshMlp();
        var peft = PeftModel.Create(model, new SvfitConfig { TargetModules = ["lin0"], EnergyThreshold = 0.9 });
        var adapter = (SvfitAdapter)Layer(peft, "lin0")["default"];
        var values = linalg.svdvals(w).data<double>().ToArray();
        int expected = SpectrumMarkers.EnergyRank(values, 0.9);
        Assert.Equal(expected, adapter.R);
        Assert.True(expected > 1 && expected < 16, $"energy rank {expected}");
        Assert.Equal(expected, model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()));

        using (no_grad()) adapter.SingularValues.add_(randn(expected) * 0.5f);
        var (u, s, vh) = linalg.svd(w, fullMatrices: false);
        var trained = adapter.SingularValues.detach().to(ScalarType.Float64);
        var adapted = (u[.., ..expected] * trained).matmul(vh[..expected]) + (u[.., expected..] * s[expected..]).matmul(vh[expected..]);
        var x = Input();
        Tensors.AssertClose(Linear64(x, adapted, b), Out(Layer(peft, "lin0"), x), 1e-4, "y = (U_r diag(s) V_r + the rest of the SVD) x + b");

        var given = PeftModel.Create(FreshMlp().Model, new SvfitConfig { TargetModules = ["lin0"], R = 5 });
        Assert.Equal(5, Layer(given, "lin0")["default"].Rank);
    }

    [Fact]
    public void Loldu_splits_the_pivoted_lu_after_r_steps_and_trains_only_the_diagonal_and_the_scale()
    {
        var (model, w, b) = FreshMlp();
        var peft = PeftModel.Create(model, new LolduConfig { TargetModules = ["lin0"], R = 4 });
        var adapter = (LolduAdapter)Layer(peft, "lin0")["default"];
        Assert.Equal(4 + 1, model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()));

        var (p, l, u) = linalg.lu(w);
        var d = u.diagonal();
        Tensors.AssertClose(d[..4], adapter.InitialDiagonal.to(ScalarType.Float64), 1e-5, "z starts at D[:r]");
        var lr = p.matmul(l[.., ..4]);
        var ur = u[..4] / d[..4].unsqueeze(1);
        var principal = (lr * d[..4]).matmul(ur);
        // The frozen residual is the Schur complement after 4 elimination steps: zero in the first 4 columns.
        var residual = w - principal;
        Assert.True(residual[.., ..4].abs().max().item<double>() < 1e-5, "W − P L_r D_r U_r vanishes in the first r columns");

        using (no_grad())
        {
            adapter.Diagonal.add_(randn(4) * 0.3f);
            adapter.Scale.fill_(1.5);
        }
        var z = adapter.Diagonal.detach().to(ScalarType.Float64);
        var adapted = residual + 1.5 * (lr * z).matmul(ur);
        var x = Input();
        Tensors.AssertClose(Linear64(x, adapted, b), Out(Layer(peft, "lin0"), x), 1e-4, "y = (W_res + s·P L_r diag(z) U_r) x + b");
    }

    [Fact]
    public void Hydra_adds_a_parallel_and_a_sequential_branch_and_merges_into_w_plus_s_times_both()
    {
        var (model, w, b) = FreshMlp();
        var peft = PeftModel.Create(model, new HydraConfig { TargetModules = ["lin0"], R = 3, Alpha = 6 });
        Tensors.PerturbAdapters(peft, "default", 0.3);
        var layer = Layer(peft, "lin0");
        var ps = layer["default"].named_parameters().ToDictionary(q => q.name, q => q.parameter.detach().to(ScalarType.Float64));
        double s = 6.0 / 3;
        var x = Input();
        var x64 = x.to(ScalarType.Float64);
        var wx = x64.matmul(w.t());
        var expected = wx + b + s * x64.matmul(ps["hydra_A_p"].t()).matmul(ps["hydra_B_p"].t()) + s * wx.matmul(ps["hydra_A_s"].t()).matmul(ps["hydra_B_s"].t());
        Tensors.AssertClose(expected, Out(layer, x), 1e-4, "y = W x + b + s·B_p A_p x + s·B_s A_s W x");

        var merged = w + s * (ps["hydra_B_p"].matmul(ps["hydra_A_p"]) + ps["hydra_B_s"].matmul(ps["hydra_A_s"]).matmul(w));
        using var mergedWeight = layer["default"].MergedWeight(layer.BaseLayer);
        Tensors.AssertClose(merged, mergedWeight.to(ScalarType.Float64), 1e-4, "W' = W + s(B_p A_p + B_s A_s W)");

        var parallelOnly = PeftModel.Create(FreshMlp().Model, new HydraConfig { TargetModules = ["lin0"], R = 3, Branches = "parallel" });
        Assert.Equal(["hydra_A_p", "hydra_B_p"], Layer(parallelOnly, "lin0")["default"].named_parameters().Select(q => q.name).Order());
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => new HydraConfig { TargetModules = ["lin0"], Branches = "diagonal" }.Validate());
        Assert.Contains("parallel", bad.Message);
    }
}

public sealed class SokaTests
{
    [Fact]
    public void Soka_starts_from_the_kpsvd_of_w_and_computes_the_residual_plus_the_trained_kronecker_terms()
    {
        manual_seed(41);
        var model = new Mlp(16, 32, 8);
        var lin1 = (TorchSharp.Modules.Linear)model.named_modules().Single(m => m.name == "lin1").module;
        var w = lin1.weight!.detach().to(ScalarType.Float64).clone();
        var b = lin1.bias!.detach().to(ScalarType.Float64).clone();
        var peft = PeftModel.Create(model, new SokaConfig { TargetModules = ["lin1"], EnergyThreshold = 0.6, GridRows = 4, GridCols = 8 });
        var layer = peft.Layers.Single();
        var adapter = (SokaAdapter)layer["default"];

        var spectrum = KroneckerSpectrum.Of(w, 4, 8);
        Assert.Equal(spectrum.RankForEnergy(0.6), adapter.Terms);
        Assert.Equal([adapter.Terms, 4L, 8], adapter.A.shape);
        Assert.Equal([adapter.Terms, 8L, 4], adapter.B.shape);
        var (a0, b0) = KroneckerSpectrum.Decompose(w, 4, 8, adapter.Terms);
        var initial = KroneckerSpectrum.Compose(a0, b0);
        Tensors.AssertClose(initial, KroneckerSpectrum.Compose(adapter.A.detach(), adapter.B.detach()).to(ScalarType.Float64), 1e-4, "A_k, B_k start from the KPSVD");

        Tensors.PerturbAdapters(peft, "default", 0.2);
        manual_seed(42);
        var x = randn(5, 32);
        var adapted = w - initial;                                  // the frozen residual
        for (int k = 0; k < adapter.Terms; k++)
            adapted = adapted + kron(adapter.A[k].detach().to(ScalarType.Float64), adapter.B[k].detach().to(ScalarType.Float64));
        Tensor y;
        using (no_grad()) y = layer.call(x).to(ScalarType.Float64);
        Tensors.AssertClose(x.to(ScalarType.Float64).matmul(adapted.t()) + b, y, 1e-4, "y = (W_res + Σ_k A_k ⊗ B_k) x + b");

        var elbow = PeftModel.Create(new Mlp(16, 32, 8), new SokaConfig { TargetModules = ["lin1"], TermSelection = "elbow" });
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => PeftModel.Create(new Mlp(16, 32, 8), new SokaConfig { TargetModules = ["lin1"], GridRows = 5 }));
        Assert.Contains("does not divide", bad.Message);
        Assert.True(elbow.Layers.Single()["default"].Rank >= 1);
    }
}

public sealed class TransformedLoraTests
{
    [Fact]
    public void Transformed_lora_computes_w_times_the_tensor_train_transform_plus_the_low_rank_term_and_merges_into_it()
    {
        manual_seed(51);
        var model = new Mlp(16, 32, 8);
        var lin0 = (TorchSharp.Modules.Linear)model.named_modules().Single(m => m.name == "lin0").module;
        var w = lin0.weight!.detach().to(ScalarType.Float64).clone();
        var bias = lin0.bias!.detach().to(ScalarType.Float64).clone();
        var peft = PeftModel.Create(model, new TransformedLoraConfig { TargetModules = ["lin0"], R = 2, LoraAlpha = 4, TtRank = 3 });
        Tensors.PerturbAdapters(peft, "default", 0.3);
        var layer = peft.Layers.Single();
        var p = layer["default"].named_parameters().ToDictionary(q => q.name, q => q.parameter.detach().to(ScalarType.Float64));
        Assert.Equal([3L, 4, 4], p["tlora_G1"].shape);                // in = 16 = 4 · 4
        var deltaT = zeros(16, 16, dtype: ScalarType.Float64);
        for (int k = 0; k < 3; k++) deltaT += kron(p["tlora_G1"][k], p["tlora_G2"][k]);
        var adapted = w.matmul(eye(16, dtype: ScalarType.Float64) + deltaT) + 2.0 * p["tlora_B"].matmul(p["tlora_A"]);
        manual_seed(52);
        var x = randn(5, 16);
        Tensor y;
        using (no_grad()) y = layer.call(x).to(ScalarType.Float64);
        Tensors.AssertClose(x.to(ScalarType.Float64).matmul(adapted.t()) + bias, y, 1e-4, "y = (W (I + ΔT) + s·B A) x + b");
        using var merged = layer["default"].MergedWeight(layer.BaseLayer);
        Tensors.AssertClose(adapted, merged.to(ScalarType.Float64), 1e-4, "W' = W (I + ΔT) + s·B A");
    }
}

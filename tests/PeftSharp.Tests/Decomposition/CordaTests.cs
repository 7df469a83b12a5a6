using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Methods;
using PeftSharp.Methods.Decomposition;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests.Decomposition;

/// <summary>CorDA as PEFT 0.20 computes it (corda.py collect_eigens_for_layer / crop_corda_eigens, layer.py corda_init),
/// written out step by step here in float64 on the layer's own weight and its inputs' covariance.</summary>
public sealed class CordaTests
{
    static Mlp NewMlp()
    {
        manual_seed(31);
        return new Mlp(16, 32, 8);
    }

    static Tensor[] Batches()
    {
        manual_seed(32);
        return [randn(10, 16), randn(7, 16)];
    }

    static Action Run(Module model, Tensor[] batches) => () => { foreach (var b in batches) ((Module<Tensor, Tensor>)model).call(b); };

    /// <summary>PEFT's steps: damp C until its inverse is accurate, SVD of W C', V = (V̂ᵀ C'⁻¹)ᵀ, crop, split √(S/s).</summary>
    static (Tensor A, Tensor B, Tensor Residual) Reference(Tensor w, Tensor c, int r, double scaling, string method)
    {
        double damp = 0.01;
        var identity = torch.eye(c.shape[0], dtype: ScalarType.Float64);
        Tensor fixedC, inv;
        while (true)
        {
            fixedC = c + identity * c.diagonal().mean() * damp;
            inv = linalg.inv(fixedC);
            if ((fixedC.matmul(inv) - identity).norm().item<double>() < 0.05) break;
            damp *= 2;
        }
        var (u, s, vh) = linalg.svd(w.matmul(fixedC), fullMatrices: false);
        var v = vh.matmul(inv).t();
        long k = s.shape[0];
        var idx = method == "ipm" ? arange(r) : arange(k - r, k);
        var sr = s.index_select(0, idx) / scaling;
        var a = v.index_select(1, idx).t().mul(sr.sqrt().view(-1, 1));
        var b = u.index_select(1, idx).mul(sr.sqrt());
        return (a, b, w - scaling * b.matmul(a));
    }

    [Theory]
    [InlineData("ipm")]
    [InlineData("kpm")]
    public void Corda_factors_and_residual_match_peft_s_computation_on_the_calibration_covariance(string method)
    {
        var model = NewMlp();
        var w = ((TorchSharp.Modules.Linear)model.named_modules().Single(m => m.name == "lin0").module).weight!.detach().to(ScalarType.Float64).clone();
        var batches = Batches();
        var config = new LoraConfig { TargetModules = ["lin0"], R = 3, LoraAlpha = 6, InitLoraWeights = LoraInit.Corda, CordaConfig = new CordaConfig { CordaMethod = method } };
        var peft = PeftModel.Create(model, config, calibrate: Run(model, batches));

        var x = cat(batches, 0).to(ScalarType.Float64);
        var c = x.t().matmul(x) / x.shape[0];
        var (a, b, residual) = Reference(w, c, 3, 2.0, method);
        var layer = peft.Layers.Single();
        var adapter = (LoraLinearAdapter)layer["default"];
        Tensors.AssertClose(a, adapter.A.detach().to(ScalarType.Float64), 1e-4, "lora_A = diag(√(S_r/s)) V_rᵀ");
        Tensors.AssertClose(b, adapter.B.detach().to(ScalarType.Float64), 1e-4, "lora_B = U_r diag(√(S_r/s))");
        Tensors.AssertClose(residual, AdapterModule.BaseWeight(layer.BaseLayer).detach().to(ScalarType.Float64), 1e-5, "base = W − s·B A");
        Assert.Equal($"corda-{method}", peft.Config("default").Variant);
    }

    [Fact]
    public void Ipm_adapts_the_largest_context_components_and_kpm_the_smallest()
    {
        var batches = Batches();
        var x = cat(batches, 0).to(ScalarType.Float64);
        var (damped, _, _) = CordaInit.DampedInverse(x.t().matmul(x) / x.shape[0]);
        var w = ((TorchSharp.Modules.Linear)NewMlp().named_modules().Single(m => m.name == "lin0").module).weight!.detach().to(ScalarType.Float64);
        var context = linalg.svdvals(w.matmul(damped));                                   // singular values of W C', largest first
        Tensor AdaptedContext(string method)
        {
            var model = NewMlp();
            var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 2, InitLoraWeights = LoraInit.Corda, CordaConfig = new CordaConfig { CordaMethod = method } },
                                        calibrate: Run(model, batches));
            var layer = peft.Layers.Single();
            using var delta = layer["default"].DeltaWeight(layer.BaseLayer)!;
            return linalg.svdvals(delta.to(ScalarType.Float64).matmul(damped))[..2];      // what the adapter holds of W C'
        }
        Tensors.AssertClose(context[..2], AdaptedContext("ipm"), 1e-3, "IPM holds the 2 largest components of W C'");
        Tensors.AssertClose(context[^2..], AdaptedContext("kpm"), 1e-3, "KPM holds the 2 smallest components of W C'");
    }

    [Fact]
    public void Corda_without_calibration_or_with_peft_cache_files_is_refused_with_what_to_do()
    {
        var config = new LoraConfig { TargetModules = ["lin0"], InitLoraWeights = LoraInit.Corda };
        var noBatches = Assert.Throws<ArgumentException>(() => PeftModel.Create(NewMlp(), config));
        Assert.Contains("calibration action", noBatches.Message);
        var cache = Assert.Throws<ArgumentException>(() => (config with { CordaConfig = new CordaConfig { CacheFile = "eigens.pt" } }).Validate());
        Assert.Contains("cache_file", cache.Message);
        var method = Assert.Throws<ArgumentOutOfRangeException>(() => (config with { CordaConfig = new CordaConfig { CordaMethod = "kpa" } }).Validate());
        Assert.Contains("\"kpm\"", method.Message);
    }

    [Fact]
    public void The_file_has_peft_s_corda_config_and_saves_as_a_plain_lora_by_default()
    {
        var model = NewMlp();
        var config = (LoraConfig)MethodList.Find("corda-kpm").CreateConfig(TargetModules.List(["lin0"]), new Dictionary<string, string> { ["rank"] = "2" });
        var peft = PeftModel.Create(model, config, calibrate: Run(model, Batches()));
        var json = config.ToPeftJson(asPlainDelta: false);
        Assert.Equal("corda", json["init_lora_weights"]!.GetValue<string>());
        var corda = (JsonObject)json["corda_config"]!;
        Assert.Equal("kpm", corda["corda_method"]!.GetValue<string>());
        Assert.True(corda.ContainsKey("cache_file") && corda.ContainsKey("covariance_file") && corda.ContainsKey("prune_temporary_fields"));
        Assert.Null(new LoraConfig { TargetModules = ["q"] }.ToPeftJson()["corda_config"]);

        // The default save is PEFT's conversion: a rank-2r LoRA on the original weights, loadable without calibration.
        var x = randn(4, 16);
        using var expected = model.call(x);
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var plain = MethodList.ConfigFromPeftJson((JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!, "adapter_config.json");
        Assert.Equal(4, ((LoraConfig)plain).R);
        Assert.Equal(LoraInit.Default, ((LoraConfig)plain).InitLoraWeights);
        var fresh = NewMlp();
        PeftModel.Load(fresh, directory);
        using var actual = fresh.call(x);
        Tensors.AssertClose(expected, actual, 2e-5, "plain LoRA on the original weights vs CorDA on the residual");

        // Unconverted, the file holds A and B for a residual base that only the same calibration rebuilds: refused, saying so.
        var raw = TempDirectory.Create();
        peft.Save(raw, asPlainDelta: false);
        var refused = Assert.Throws<ArgumentException>(() => PeftModel.Load(NewMlp(), raw));
        Assert.Contains("calibration", refused.Message);
    }
}

using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Models.Gpt;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>SPT (He et al. 2023): the sensitivity Σ_b (∂L_b/∂W)², the global top-τ budget, the LoRA / sparse split,
/// and a sparse delta that changes only its chosen entries.</summary>
public sealed class SptTests
{
    static Mlp NewMlp()
    {
        manual_seed(5);
        var model = new Mlp();
        model.eval();
        return model;
    }

    static Tensor[] Batches()
    {
        manual_seed(9);
        return [randn(6, 16), randn(4, 16), randn(5, 16)];
    }

    // Each batch's loss mean(y²) backpropagated on its own: the calibration action SPT expects.
    static Action SquaredOutput(Module<Tensor, Tensor> model, Tensor[] batches) => () =>
    {
        foreach (var x in batches)
        {
            using var scope = NewDisposeScope();
            model.call(x).square().mean().backward();
        }
    };

    [Fact]
    public void The_sensitivity_is_the_sum_over_batches_of_each_weights_squared_gradient_computed_by_hand()
    {
        var model = NewMlp();
        var batches = Batches();
        using var map = Sensitivity.Measure(model, ["lin1", "head"], SquaredOutput(model, batches));

        // By hand, in float64: h0 = relu(W0 x + b0), z1 = W1 h0 + b1, h1 = relu(z1), y = W2 h1 + b2, L = mean(y²) over
        // the N·8 outputs; ∂L/∂y = 2y / (N·8), ∂L/∂W2 = (∂L/∂y)ᵀ h1, ∂L/∂W1 = ((∂L/∂y) W2 ⊙ [z1 > 0])ᵀ h0.
        Tensor P(string name) => model.get_parameter(name)!.detach().to(ScalarType.Float64);
        using var expectedHead = zeros(8, 32, ScalarType.Float64);
        using var expectedLin1 = zeros(32, 32, ScalarType.Float64);
        foreach (var batch in batches)
        {
            using var scope = NewDisposeScope();
            var x = batch.to(ScalarType.Float64);
            var h0 = functional.relu(x.matmul(P("lin0.weight").t()) + P("lin0.bias"));
            var z1 = h0.matmul(P("lin1.weight").t()) + P("lin1.bias");
            var h1 = functional.relu(z1);
            var y = h1.matmul(P("head.weight").t()) + P("head.bias");
            var dy = y * 2.0 / y.numel();
            expectedHead.add_(dy.t().matmul(h1).square());
            var dz1 = dy.matmul(P("head.weight")) * (z1 > 0).to(ScalarType.Float64);
            expectedLin1.add_(dz1.t().matmul(h0).square());
        }
        Tensors.AssertClose(expectedHead, map["head"], 1e-9, "Σ_b (∂L_b/∂W_head)²");
        Tensors.AssertClose(expectedLin1, map["lin1"], 1e-9, "Σ_b (∂L_b/∂W_lin1)²");
        Assert.Equal(3, map.Batches);
        Assert.True(map["lin1"].max().item<double>() > 0, "the scores are not all zero");
    }

    [Fact]
    public void Measuring_leaves_the_models_requires_grad_and_gradients_as_they_were_and_no_tensors_behind()
    {
        var model = NewMlp();
        var batches = Batches();
        model.get_parameter("lin0.weight")!.requires_grad = false;
        using (var _ = no_grad()) model.get_parameter("head.weight")!.grad = full(8, 32, 0.5f);
        var flags = model.named_parameters().Select(p => (p.name, p.parameter.requires_grad)).ToList();

        Sensitivity.Measure(model, ["lin0", "head"], SquaredOutput(model, batches)).Dispose();   // warm-up
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) Sensitivity.Measure(model, ["lin0", "head"], SquaredOutput(model, batches)).Dispose();

        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.Equal(flags, model.named_parameters().Select(p => (p.name, p.parameter.requires_grad)).ToList());
        using var headGrad = model.get_parameter("head.weight")!.grad;
        Assert.NotNull(headGrad);
        Assert.True(headGrad!.eq(0.5f).all().item<bool>(), "head.weight keeps the gradient it held");
        Assert.Null(model.get_parameter("lin0.weight")!.grad);
        Assert.Null(model.get_parameter("lin1.bias")!.grad);
    }

    [Fact]
    public void The_global_top_tau_takes_exactly_tau_entries_and_none_left_out_is_more_sensitive()
    {
        var model = NewMlp();
        using var map = Sensitivity.Measure(model, ["lin0", "lin1", "head"], SquaredOutput(model, Batches()));
        var top = map.TopEntries(150);
        Assert.Equal(150, top.Values.Sum(p => p.Length));
        double lowestChosen = double.MaxValue, highestLeft = double.MinValue;
        foreach (var path in map.Paths)
        {
            var scores = map[path].flatten().data<double>().ToArray();
            var chosen = top[path].ToHashSet();
            for (int i = 0; i < scores.Length; i++)
                if (chosen.Contains(i)) lowestChosen = Math.Min(lowestChosen, scores[i]);
                else highestLeft = Math.Max(highestLeft, scores[i]);
        }
        Assert.True(lowestChosen >= highestLeft, $"the least sensitive chosen entry ({lowestChosen}) is below one left out ({highestLeft})");
        Assert.Throws<ArgumentOutOfRangeException>(() => map.TopEntries(map.TotalEntries + 1));
    }

    [Fact]
    public void Matrices_with_more_sensitive_entries_than_the_threshold_get_a_LoRA_and_the_others_a_sparse_delta_on_exactly_those_entries()
    {
        var row = MethodMatrix.Get("mlp-spt");
        var model = row.NewModel();
        var peft = row.Attach(model);
        var config = (SptConfig)peft.Config(PeftModel.DefaultAdapterName);
        var original = (SptConfig)row.Config();

        // The row's own calibration, measured directly on a second copy of its model (same weights, same batches).
        var copy = row.NewModel();
        using var map = Sensitivity.Measure(copy, ["lin0", "lin1"], row.Calibrate!(copy));
        var counts = map.SensitiveCounts(original.SensitiveEntries!.Value);
        Assert.Equal(counts.Where(c => c.Value > original.StructuredThreshold).Select(c => c.Key).Order(), config.LoraModules!.Order());
        Assert.Equal(counts.Where(c => c.Value <= original.StructuredThreshold).ToDictionary(), config.SparsePattern!.ToDictionary());
        Assert.True(config.LoraModules!.Count == 1 && config.SparsePattern!.Count == 1, "the row exercises both kinds of tuning");

        var top = map.TopEntries(original.SensitiveEntries!.Value);
        foreach (var layer in peft.Layers)
            if (layer[PeftModel.DefaultAdapterName] is SptSparseAdapter sparse)
                Assert.Equal(top[layer.Path], sparse.Indices.data<long>().ToArray());
            else Assert.IsType<LoraLinearAdapter>(layer[PeftModel.DefaultAdapterName]);
    }

    [Fact]
    public void Training_changes_only_the_chosen_entries_of_a_sparse_target()
    {
        var row = MethodMatrix.Get("block-spt");
        var model = row.NewModel();
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        var peft = row.Attach(model);
        var chosen = peft.Layers.Where(l => l[PeftModel.DefaultAdapterName] is SptSparseAdapter)
            .ToDictionary(l => l.Path, l => ((SptSparseAdapter)l[PeftModel.DefaultAdapterName]).Indices.data<long>().ToHashSet());
        Assert.NotEmpty(chosen);

        manual_seed(3);
        var batches = Enumerable.Range(0, 4).Select(_ => row.Input()).ToList();
        new Trainer().Fit(peft, _ => batches, x => ((Module<Tensor, Tensor>)model).call(x).square().mean(), new TrainerOptions { Epochs = 3, LearningRate = 0.05 });
        var loraTargets = ((SptConfig)peft.Config(PeftModel.DefaultAdapterName)).LoraModules!.Select(p => p + ".weight").ToHashSet();
        Assert.NotEmpty(loraTargets);   // the default threshold gives this row both kinds
        peft.MergeAndUnload();

        int changedSomewhere = 0;
        foreach (var (path, entries) in chosen)
        {
            string key = path + ".weight";
            var changed = before[key].ne(model.get_parameter(key)!).flatten().nonzero().flatten().data<long>().ToArray();
            Assert.True(changed.All(entries.Contains), $"{path}: entries {string.Join(", ", changed.Where(i => !entries.Contains(i)).Take(5))} changed but were not chosen");
            changedSomewhere += changed.Length;
        }
        Assert.True(changedSomewhere > 0, "training changed some chosen entries");
        // Everything else in the model that is not a LoRA target is exactly as before.
        foreach (var (name, value) in before.Where(p => !chosen.ContainsKey(p.Key[..p.Key.LastIndexOf('.')]) && !loraTargets.Contains(p.Key)))
            Tensors.AssertEqual(value, model.get_parameter(name)!, name);
    }

    [Theory]
    [InlineData(16, 16, 12)]   // r·(out+in)/5 = 12.8: 13 entries give a LoRA, 12 a sparse delta
    [InlineData(32, 16, 19)]   // 19.2
    [InlineData(30, 20, 19)]   // exactly 20: 20 entries reach it
    public void The_default_threshold_is_the_authors_rule_count_at_least_a_fifth_of_the_LoRAs_size(int outFeatures, int inFeatures, long sigma)
    {
        var config = new SptConfig { R = 2 };
        Assert.Equal(sigma, config.ThresholdFor(outFeatures, inFeatures));
        Assert.Equal(7, (config with { StructuredThreshold = 7 }).ThresholdFor(outFeatures, inFeatures));
    }

    [Fact]
    public void Without_calibration_data_or_with_a_budget_beyond_the_targets_SPT_says_what_is_needed()
    {
        var missing = Assert.Throws<ArgumentException>(() => PeftModel.Create(NewMlp(), new SptConfig { TargetModules = ["lin0"], SensitiveEntries = 10 }));
        Assert.Contains("calibrate", missing.Message);
        var model = NewMlp();
        var tooMany = Assert.Throws<ArgumentOutOfRangeException>(() =>
            PeftModel.Create(model, new SptConfig { TargetModules = ["lin0"], SensitiveEntries = 513 }, calibrate: SquaredOutput(model, Batches())));
        Assert.Contains("512 entries", tooMany.Message);
        Assert.Contains("sensitive_entries", Assert.Throws<ArgumentException>(() => new SptConfig { TargetModules = ["lin0"] }.Validate()).Message);
        var noBackward = Assert.Throws<ArgumentException>(() => Sensitivity.Measure(model, ["lin0"], () => model.call(Batches()[0]).Dispose()));
        Assert.Contains("backward()", noBackward.Message);
        Assert.Contains("named twice", Assert.Throws<ArgumentException>(() => Sensitivity.Measure(model, ["lin0", "lin0"], () => { })).Message);
    }

    [Fact]
    public void The_sensitivity_heatmap_puts_each_layers_sensitive_entries_under_its_module()
    {
        manual_seed(2);
        var model = new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 });
        var paths = new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj" };
        var tokens = randint(0, 40, [3, 7], dtype: ScalarType.Int64);
        using var map = Sensitivity.Measure(model, paths, () => model.call(tokens).square().mean().backward());
        var heatmap = map.Heatmap(100);
        Assert.Equal(["model.layers.0", "model.layers.1"], heatmap.Rows);
        Assert.Equal(["self_attn.q_proj", "mlp.down_proj"], heatmap.Columns);
        var counts = map.SensitiveCounts(100);
        Assert.Equal(counts["model.layers.1.mlp.down_proj"], heatmap["model.layers.1", "mlp.down_proj"]);
        Assert.Equal(100, heatmap.Values.Sum(r => r.Sum()));
        var share = map.Heatmap(100, share: true);
        Assert.Equal(counts["model.layers.0.self_attn.q_proj"] / 256.0, share["model.layers.0", "self_attn.q_proj"], 12);
    }
}

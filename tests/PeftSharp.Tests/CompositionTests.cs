using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Several adapters at once: stack, sum, average, AdapterHub's Parallel (ForwardEach), ScaLearn's formula.</summary>
public sealed class CompositionTests
{
    static (Mlp Model, PeftModel Peft, Tensor X) TwoBottlenecks()
    {
        manual_seed(3);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new BottleneckConfig { TargetModules = ["lin1"], BottleneckSize = 4 }, "language");
        peft.AddAdapter("task", new BottleneckConfig { TargetModules = ["lin1"], BottleneckSize = 4 });
        Tensors.PerturbAdapters(peft, "language", 0.5);
        Tensors.PerturbAdapters(peft, "task", 0.5);
        return (model, peft, randn(3, 16));
    }

    static Tensor Lin1Output(PeftModel peft, Tensor h, params string[] active)
    {
        peft.SetActiveAdapters(peft.Composition, null, active);
        return peft.Layers.Single().call(h);
    }

    [Fact]
    public void Stacking_feeds_each_adapter_the_output_of_the_one_before()
    {
        var (_, peft, _) = TwoBottlenecks();
        using var h = randn(3, 32);
        var layer = peft.Layers.Single();
        using var y = layer.BaseLayer.call(h);
        using var language = layer["language"].Apply(h, y.clone(), layer.BaseLayer);
        using var expected = layer["task"].Apply(h, language.clone(), layer.BaseLayer);
        peft.SetActiveAdapters(AdapterComposition.Stack, null, "language", "task");
        using var stacked = layer.call(h);
        Tensors.AssertClose(expected, stacked, 1e-6, "stack = task(language(y))");
    }

    [Fact]
    public void Sum_and_average_combine_each_adapters_contribution_to_the_same_base_output()
    {
        var (_, peft, _) = TwoBottlenecks();
        using var h = randn(3, 32);
        var layer = peft.Layers.Single();
        using var y = layer.BaseLayer.call(h);
        using var a = layer["language"].Delta(h, y, layer.BaseLayer);
        using var b = layer["task"].Delta(h, y, layer.BaseLayer);
        peft.SetActiveAdapters(AdapterComposition.Sum, null, "language", "task");
        using var sum = layer.call(h);
        Tensors.AssertClose(y + a + b, sum, 1e-6, "sum");
        peft.SetActiveAdapters(AdapterComposition.Average, null, "language", "task");
        using var average = layer.call(h);
        Tensors.AssertClose(y + (a + b) / 2, average, 1e-6, "average");
        peft.SetActiveAdapters(AdapterComposition.Average, [0.25, 0.75], "language", "task");
        using var weighted = layer.call(h);
        Tensors.AssertClose(y + a * 0.25 + b * 0.75, weighted, 1e-6, "weighted average");
        Assert.Throws<ArgumentException>(() => peft.SetActiveAdapters(AdapterComposition.Sum, [0.5, 0.5], "language", "task"));
    }

    [Fact]
    public void ForwardEach_runs_the_batch_once_per_adapter_as_AdapterHubs_parallel_block()
    {
        var (model, peft, x) = TwoBottlenecks();
        using var each = peft.ForwardEach(x, ["language", "task", AdapterLayer.BaseOnly]);
        Assert.Equal(new long[] { 9, 8 }, each.shape);
        peft.SetActiveAdapters("task");
        using var task = model.call(x);
        Tensors.AssertClose(task, each[3..6], 1e-6, "rows of 'task'");
        using (peft.DisableAdapters())
        {
            using var plain = model.call(x);
            Tensors.AssertClose(plain, each[6..9], 1e-6, "rows of the base model");
        }
    }

    [Fact]
    public void ScaLearn_adds_each_source_contribution_scaled_by_its_own_vector()
    {
        var (_, peft, _) = TwoBottlenecks();
        peft.AddAdapter("scalearn", new ScaLearnConfig { TargetModules = ["lin1"], SourceAdapters = ["language", "task"] });
        peft.SetActiveAdapters("scalearn");
        var layer = peft.Layers.Single();
        var scales = ((ScaLearnAdapter)layer["scalearn"]).Scales;
        Assert.Equal(new long[] { 2, 32 }, scales.shape);
        using (no_grad()) scales.copy_(randn(2, 32));
        using var h = randn(3, 32);
        using var y = layer.BaseLayer.call(h);
        using var a = layer["language"].Delta(h, y, layer.BaseLayer);
        using var b = layer["task"].Delta(h, y, layer.BaseLayer);
        using var output = layer.call(h);
        Tensors.AssertClose(y + a * scales[0] + b * scales[1], output, 1e-5, "o = h + λ_1 ⊙ Δ_1 + λ_2 ⊙ Δ_2");
        Assert.All(peft.Model.named_parameters().Where(p => p.parameter.requires_grad), p => Assert.Contains(".scalearn.", p.name));
    }

    [Fact]
    public void A_source_adapter_cannot_be_deleted_before_the_composition_that_uses_it()
    {
        var (_, peft, _) = TwoBottlenecks();
        peft.AddAdapter("fusion", new AdapterFusionConfig { TargetModules = ["lin1"], SourceAdapters = ["language", "task"] });
        var error = Assert.Throws<InvalidOperationException>(() => peft.DeleteAdapter("task"));
        Assert.Contains("'fusion'", error.Message);
        peft.DeleteAdapter("fusion");
        peft.DeleteAdapter("task");
        var missing = Assert.Throws<ArgumentException>(() => peft.AddAdapter("s", new ScaLearnConfig { TargetModules = ["lin1"], SourceAdapters = ["language", "task"] }));
        Assert.Contains("'task'", missing.Message);
    }

    [Fact]
    public void A_composition_at_a_layer_without_its_sources_names_the_layer()
    {
        var (_, peft, _) = TwoBottlenecks();
        var error = Assert.Throws<ArgumentException>(() => peft.AddAdapter("s", new ScaLearnConfig { TargetModules = ["lin0", "lin1"], SourceAdapters = ["language", "task"] }));
        Assert.Contains("'lin0'", error.Message);
    }

    [Fact]
    public void AdapterFusion_reports_its_attention_over_the_sources_as_routing_weights_that_sum_to_one()
    {
        var (model, peft, x) = TwoBottlenecks();
        peft.AddAdapter("fusion", new AdapterFusionConfig { TargetModules = ["lin1"], SourceAdapters = ["language", "task"] });
        peft.SetActiveAdapters("fusion");
        using (var _ = model.call(x)) { }
        var routing = RoutingWeights.Collect(peft, "example");
        var layer = Assert.Single(routing.Layers);
        Assert.Equal("lin1", layer.Layer);
        Assert.Equal(["language", "task"], layer.Experts);
        Assert.Equal(3, layer.Rows.Count);                                      // one row per example of the batch
        foreach (var row in layer.Weights) Assert.Equal(1.0, row.Sum(), 5);
    }
}

using PeftSharp.Adapters;
using PeftSharp.Methods.Routing;
using PeftSharp.Models;
using PeftSharp.Models.Gpt;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>MoLA: top-k renormalised routing, the forward, the load-balancing loss, the per-layer expert counts and the
/// routing reports, each against a direct computation.</summary>
public sealed class MolaTests
{
    static double[][] Rows(Tensor t)
    {
        using var d = t.detach().to(ScalarType.Float64).cpu();
        var values = d.data<double>().ToArray();
        int cols = (int)d.shape[^1];
        return Enumerable.Range(0, values.Length / cols).Select(i => values[(i * cols)..((i + 1) * cols)]).ToArray();
    }

    [Fact]
    public void The_top_k_gates_are_renormalised_to_sum_to_one_and_the_others_are_zero()
    {
        manual_seed(3);
        using var gates = randn(5, 4).softmax(-1);
        var (weights, mask) = MolaAdapter.TopKRenormalised(gates, 2);
        var g = Rows(gates);
        var w = Rows(weights);
        for (int i = 0; i < g.Length; i++)
        {
            var top = g[i].Select((v, j) => (v, j)).OrderByDescending(p => p.v).Take(2).Select(p => p.j).ToHashSet();
            double kept = top.Sum(j => g[i][j]);
            for (int j = 0; j < 4; j++)
                Assert.Equal(top.Contains(j) ? g[i][j] / kept : 0, w[i][j], 6);
        }
        Assert.All(Rows(mask), m => Assert.Equal(2, m.Sum()));
        weights.Dispose();
        mask.Dispose();
    }

    static (Mlp Model, PeftModel Peft, MolaAdapter Adapter) OneLayer(int experts = 3, int topK = 2)
    {
        manual_seed(8);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new MolaConfig { TargetModules = ["lin1"], R = 2, LoraAlpha = 6, NumExperts = experts, TopK = topK });
        Tensors.PerturbAdapters(peft, "default", 0.5);
        return (model, peft, (MolaAdapter)peft.Layers.Single()["default"]);
    }

    [Fact]
    public void The_layer_adds_the_weighted_sum_of_its_top_k_experts()
    {
        var (_, peft, adapter) = OneLayer();
        var layer = peft.Layers.Single();
        var p = adapter.named_parameters().ToDictionary(n => n.name, n => (Tensor)n.parameter.detach());
        manual_seed(1);
        var h = randn(6, 32);
        using var output = layer.call(h);
        using var expected = layer.BaseLayer.call(h).detach().clone();
        var gates = Rows(h.matmul(p["mola_router.weight"].t()).softmax(-1));
        for (int n = 0; n < 6; n++)
        {
            var top = gates[n].Select((v, j) => (v, j)).OrderByDescending(q => q.v).Take(2).ToList();
            double kept = top.Sum(q => q.v);
            foreach (var (g, e) in top)
                expected[n].add_(p["mola_B"][e].matmul(p["mola_A"][e].matmul(h[n])) * (g / kept * 3.0));   // s = 6 / 2
        }
        Tensors.AssertClose(expected, output, 1e-5, "MoLA layer output");
    }

    [Fact]
    public void The_load_balancing_loss_is_E_times_the_sum_of_top_k_fractions_times_mean_gates()
    {
        var (model, peft, adapter) = OneLayer(experts: 4, topK: 2);
        manual_seed(2);
        var x = randn(10, 16);
        model.call(x).Dispose();
        using var loss = Mola.LoadBalancingLoss(peft);

        // The tokens lin1 saw: relu(lin0 x).
        var lin0 = (nn.Module<Tensor, Tensor>)model.named_children().Single(c => c.name == "lin0").module;
        using var tokens = nn.functional.relu(lin0.call(x)).detach();
        var gates = Rows(tokens.matmul(adapter.RouterWeight.detach().t()).softmax(-1));
        double direct = 0;
        for (int e = 0; e < 4; e++)
        {
            double fraction = gates.Count(g => g.Select((v, j) => (v, j)).OrderByDescending(q => q.v).Take(2).Any(q => q.j == e)) / (double)gates.Length;
            double meanGate = gates.Average(g => g[e]);
            direct += fraction * meanGate;
        }
        Assert.True(Math.Abs(4 * direct - loss.item<float>()) < 1e-5, $"loss {loss.item<float>()} vs direct {4 * direct}");
        // Even load gives k; the loss reaches the router.
        Assert.True(loss.item<float>() >= 2 - 1e-4);
        loss.backward();
        Assert.True(adapter.RouterWeight.grad!.abs().sum().item<float>() > 0);
    }

    [Fact]
    public void The_trainer_adds_the_load_balancing_term_and_logs_it()
    {
        var (model, peft, _) = OneLayer();
        manual_seed(4);
        var x = randn(8, 16);
        var y = randn(8, 8);
        var trainer = new Trainer();
        trainer.AddLossTerm("load balance", () => 0.01 * Mola.LoadBalancingLoss(peft));
        var log = trainer.Fit(peft, _ => new[] { 0 }, _ => nn.functional.mse_loss(model.call(x), y), new TrainerOptions { Epochs = 3, LearningRate = 1e-2 });
        Assert.Equal(3, log.Steps.Count);
        Assert.All(log.Steps, s => Assert.InRange(s.Reported["load balance"], 0.01 * 2 - 1e-6, 0.01 * 3 + 1e-6));
    }

    [Theory]
    [InlineData("uniform", new[] { 2, 2, 2, 2 })]
    [InlineData("triangle", new[] { 3, 2, 2, 1 })]
    [InlineData("inverted_triangle", new[] { 1, 2, 2, 3 })]
    [InlineData("hourglass", new[] { 3, 1, 1, 3 })]
    public void Expert_counts_follow_the_allocation_at_an_equal_total(string allocation, int[] expected)
    {
        var config = new MolaConfig { NumExperts = 2, ExpertAllocation = allocation };
        Assert.Equal(expected, config.Allocate(4));
        Assert.Equal(8, config.Allocate(4).Sum());
        // The paper's 32-layer shape: MoLA-△ gives layers in quarters 8-6-4-2 around a mean of 5.
        var paper = new MolaConfig { NumExperts = 5, ExpertAllocation = allocation }.Allocate(32);
        Assert.Equal(160, paper.Sum());
        if (allocation == "triangle") Assert.True(paper[0] > paper[^1]);
        if (allocation == "inverted_triangle") Assert.True(paper[0] < paper[^1]);
    }

    [Fact]
    public void Each_layer_of_the_model_gets_its_count_and_a_list_sets_them_explicitly()
    {
        manual_seed(0);
        var model = new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 });
        var peft = PeftModel.Create(model, new MolaConfig { TargetModules = ["down_proj", "q_proj"], R = 2, ExpertsPerLayer = [1, 3] });
        var counts = peft.Layers.ToDictionary(l => l.Path, l => ((MolaAdapter)l["default"]).Experts);
        Assert.All(counts, c => Assert.Equal(MolaConfig.LayerIndex(c.Key) == 0 ? 1 : 3, c.Value));
        Assert.Equal(1, ((MolaAdapter)peft.Layers.First(l => MolaConfig.LayerIndex(l.Path) == 0)["default"]).TopK);   // k_l = min(top_k, E_l)

        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 }),
            new MolaConfig { TargetModules = ["down_proj"], ExpertsPerLayer = [1, 2, 3] }));
        Assert.Contains("3 counts but the targets span 2 layer(s)", error.Message);
    }

    [Fact]
    public void The_router_choices_are_reported_per_token_and_layer()
    {
        var row = MethodMatrix.Get("gpt-mola-triangle");
        var model = row.NewModel();
        var peft = row.Attach(model);
        Tensors.PerturbAdapters(peft, "default", 0.5);
        var context = new ForwardContext();
        using var _ = peft.Forward(row.NewInput(), context);
        var routing = context.RoutingWeights();
        Assert.Equal(peft.Layers.Select(l => l.Path), routing.Layers.Select(l => l.Layer));
        foreach (var layer in routing.Layers)
        {
            Assert.Equal(4 * 6, layer.Rows.Count);   // batch 4 × 6 tokens
            Assert.All(layer.Weights, w => Assert.Equal(1.0, w.Sum(), 6));
            Assert.All(layer.Weights, w => Assert.Equal(2, w.Count(v => v > 0)));
        }
        Assert.Equal([4, 2], routing.Layers.Select(l => l.Experts.Count).Distinct().Order().Reverse());
    }
}

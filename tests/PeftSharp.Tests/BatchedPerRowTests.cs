using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>
/// The batched path for mixed batches (<see cref="LowRankBatch"/>: base once, every row's low-rank adapter in gathered
/// batched products) against the grouped loop it replaces (one pass per adapter), which stays the reference: same
/// outputs and gradients, ranks that differ, "base only" rows, rows whose adapter a layer does not hold, dropout.
/// </summary>
public sealed class BatchedPerRowTests
{
    /// <summary>Output and the gradient of every trainable parameter for one mixed batch computed along <paramref name="path"/>.</summary>
    static (Tensor Output, Dictionary<string, Tensor?> Gradients) Run(PeftModel peft, Tensor x, IReadOnlyList<string> rows, PerRowPath path, Tensor? outputWeights = null)
    {
        var model = (Module<Tensor, Tensor>)peft.Model;
        foreach (var p in model.parameters()) p.grad = null;
        Tensor output;
        using (peft.UseAdapterPerRow(rows, path)) output = model.call(x);
        using (var weights = outputWeights ?? ones_like(output))
        using (var loss = (output * weights).sum())
            loss.backward();
        var gradients = model.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad?.detach().clone());
        return (output.detach(), gradients);
    }

    static void AssertSame((Tensor Output, Dictionary<string, Tensor?> Gradients) batched, (Tensor Output, Dictionary<string, Tensor?> Gradients) grouped, string what)
    {
        Tensors.AssertClose(grouped.Output, batched.Output, 1e-5, $"{what}: output");
        Assert.Equal(grouped.Gradients.Keys.Order(), batched.Gradients.Keys.Order());
        foreach (var (name, expected) in grouped.Gradients)
        {
            var actual = batched.Gradients[name];
            Assert.True((expected is null) == (actual is null), $"{what}: gradient of {name} is {(expected is null ? "absent" : "present")} in the grouped loop but not in the batched path.");
            if (expected is not null) Tensors.AssertClose(expected, actual!, 1e-5, $"{what}: gradient of {name}");
        }
    }

    static bool HasLowRankForm(AdapterConfig config) => config is LoraConfig { UseDora: false, LoraBias: false };

    [Theory, MemberData(nameof(MethodMatrix.PerRow), MemberType = typeof(MethodMatrix))]
    public void The_batched_path_gives_the_grouped_loops_outputs_and_gradients(string name)
    {
        var c = MethodMatrix.Get(name);
        var peft = c.Attach(c.NewModel());
        peft.AddAdapter("other", c.SecondConfig());
        Tensors.PerturbAdapters(peft, "default");
        Tensors.PerturbAdapters(peft, "other");
        peft.SetActiveAdapters("default", "other");   // both train
        var x = c.NewInput();
        string[] rows = ["default", "other", AdapterLayer.BaseOnly, "default"];

        var grouped = Run(peft, x, rows, PerRowPath.Grouped);
        Assert.All(peft.Layers.Where(l => l.LastPerRowPath is not null), l => Assert.Equal(PerRowPath.Grouped, l.LastPerRowPath));
        var batched = Run(peft, x, rows, PerRowPath.Batched);
        AssertSame(batched, grouped, name);

        // The layers whose adapters are all plain low-rank products (LoRA, rsLoRA, PiSSA/OLoRA, SPT's structured part, ...)
        // took the batched path; the others fell back to the grouped loop.
        Assert.All(peft.Layers.Where(l => l.LastPerRowPath is not null), l => Assert.Equal(
            l.AdapterNames.All(a => l[a].LowRank is not null) ? PerRowPath.Batched : PerRowPath.Grouped, l.LastPerRowPath));
        if (HasLowRankForm(c.Config())) Assert.Contains(peft.Layers, l => l.LastPerRowPath == PerRowPath.Batched);
    }

    /// <summary>Three LoRAs of ranks 2, 6 and 4 (rsLoRA): r6 on lin1 only, so at lin0 its rows are base rows.</summary>
    static PeftModel ThreeRanks()
    {
        manual_seed(21);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2, LoraAlpha = 4, InitLoraWeights = LoraInit.Random }, "r2");
        peft.AddAdapter("r6", new LoraConfig { TargetModules = ["lin1"], R = 6, LoraAlpha = 3, InitLoraWeights = LoraInit.Random });
        peft.AddAdapter("r4", new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, UseRslora = true, InitLoraWeights = LoraInit.Random });
        peft.SetActiveAdapters("r2", "r6", "r4");
        return peft;
    }

    [Fact]
    public void Ranks_that_differ_base_only_rows_and_rows_a_layer_does_not_hold_match_the_grouped_loop()
    {
        var peft = ThreeRanks();
        manual_seed(5);
        using var x = randn(7, 3, 16);
        using var outputWeights = randn(7, 3, 8);
        string[] rows = ["r2", AdapterLayer.BaseOnly, "r6", "r4", "r6", AdapterLayer.BaseOnly, "r2"];
        var grouped = Run(peft, x, rows, PerRowPath.Grouped, outputWeights.clone());
        var batched = Run(peft, x, rows, PerRowPath.Batched, outputWeights.clone());
        AssertSame(batched, grouped, "ranks 2, 6, 4");
        Assert.All(peft.Layers, l => Assert.Equal(PerRowPath.Batched, l.LastPerRowPath));

        // Base-only rows are exactly the base model's.
        using (peft.DisableAdapters())
        {
            using var plain = peft.Model is Module<Tensor, Tensor> m ? m.call(x) : throw new InvalidOperationException();
            Tensors.AssertEqual(plain[1], batched.Output[1], "base-only row 1");
            Tensors.AssertEqual(plain[5], batched.Output[5], "base-only row 5");
        }
    }

    [Fact]
    public void Auto_batches_where_two_or_more_adapters_meet_and_loops_for_one()
    {
        var peft = ThreeRanks();
        using var x = randn(4, 16);
        using (peft.UseAdapterPerRow(["r2", "r4", "r2", AdapterLayer.BaseOnly])) using (var _ = ((Module<Tensor, Tensor>)peft.Model).call(x)) { }
        Assert.All(peft.Layers, l => Assert.Equal(PerRowPath.Batched, l.LastPerRowPath));
        using (peft.UseAdapterPerRow(["r2", AdapterLayer.BaseOnly, "r2", "r2"])) using (var _ = ((Module<Tensor, Tensor>)peft.Model).call(x)) { }
        Assert.All(peft.Layers, l => Assert.Equal(PerRowPath.Grouped, l.LastPerRowPath));
    }

    [Fact]
    public void Dropout_acts_per_row_with_each_rows_own_adapters_probability()
    {
        manual_seed(8);
        var model = new Mlp();
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraDropout = 0.5, InitLoraWeights = LoraInit.Random }, "dropping");
        peft.AddAdapter("plain", new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Random });
        using var x = randn(6, 16);
        string[] rows = ["dropping", "plain", AdapterLayer.BaseOnly, "dropping", "plain", AdapterLayer.BaseOnly];
        model.eval();
        using var evaluated = peft.Forward(x, rows);
        model.train();
        Tensor trained;
        using (peft.UseAdapterPerRow(rows, PerRowPath.Batched)) trained = model.call(x);
        Assert.All(peft.Layers, l => Assert.Equal(PerRowPath.Batched, l.LastPerRowPath));
        foreach (int i in new[] { 1, 2, 4, 5 })
            Tensors.AssertClose(evaluated[i], trained[i], 1e-6, $"row {i} ({rows[i]}): no dropout there");
        foreach (int i in new[] { 0, 3 })
            Tensors.AssertDifferent(evaluated[i], trained[i], $"row {i} ({rows[i]}): dropout 0.5 in training");
    }

    [Fact]
    public void A_batched_forward_and_backward_leave_no_live_tensors()
    {
        var peft = ThreeRanks();
        using var x = randn(5, 16);
        string[] rows = ["r2", "r6", AdapterLayer.BaseOnly, "r4", "r2"];
        void Step()
        {
            using var scope = NewDisposeScope();
            using (peft.UseAdapterPerRow(rows, PerRowPath.Batched))
                ((Module<Tensor, Tensor>)peft.Model).call(x).sum().backward();
        }
        Step();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Step();
        Step();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}

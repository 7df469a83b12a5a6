using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>
/// IncreLoRA: the module importance against a direct computation, growth adding exactly one triplet to each top module
/// (and nothing to the others, the function unchanged), the optimizer state of the existing tensors surviving a growth,
/// the restart warm-up of an added λ, training through the Trainer with a save/load round trip at the grown ranks.
/// </summary>
public sealed class IncreLoraTests
{
    static readonly string[] Targets = ["lin0", "lin1", "head"];

    static IReadOnlyList<(Tensor X, Tensor Y)> Batches()
    {
        var x = randn(16, 3, 16);
        var y = randn(16, 3, 8);
        return Enumerable.Range(0, 4).Select(i => (x[TensorIndex.Slice(4 * i, 4 * i + 4)], y[TensorIndex.Slice(4 * i, 4 * i + 4)])).ToList();
    }

    static IncreLoraLinearAdapter Adapter(PeftModel peft, string path) => (IncreLoraLinearAdapter)peft.Layers.Single(l => l.Path == path)["default"];

    [Fact]
    public void A_modules_importance_is_the_mean_over_its_triplets_of_AdaLoRAs_smoothed_sensitivity_times_uncertainty()
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        var model = new Mlp();
        // Random init so that every tensor has a gradient from the first step; no regulariser, so the gradients are the task's.
        var peft = PeftModel.Create(model, new IncreLoraConfig { TargetModules = Targets, InitR = 3, TargetR = 5, InitLoraWeights = LoraInit.Random, OrthRegWeight = 0 });
        var allocator = IncreLoraAllocator.For(peft);
        var batches = Batches();
        const double beta1 = 0.85, beta2 = 0.85;
        var expected = new Dictionary<Parameter, (Tensor S, Tensor U)>(ReferenceEqualityComparer.Instance);
        model.train();
        for (int step = 0; step < 3; step++)
        {
            foreach (var p in model.parameters()) p.grad?.zero_();
            functional.mse_loss(model.call(batches[step].X), batches[step].Y).backward();
            using (no_grad())
                foreach (var path in Targets)
                    foreach (var p in new[] { Adapter(peft, path).get_parameter("lora_A")!, Adapter(peft, path).get_parameter("lora_E")!, Adapter(peft, path).get_parameter("lora_B")! })
                    {
                        var importance = (p * p.grad!).abs();                                   // I = |p·∇p|
                        var (s, u) = expected.TryGetValue(p, out var v) ? v : (zeros_like(p), zeros_like(p));
                        var sensitivity = beta1 * s + (1 - beta1) * importance;                  // Ī
                        expected[p] = (sensitivity, beta2 * u + (1 - beta2) * (importance - sensitivity).abs());   // Ū
                    }
            allocator.UpdateImportance();
        }
        var scores = allocator.ModuleScores();
        for (int i = 0; i < Targets.Length; i++)
        {
            var adapter = Adapter(peft, Targets[i]);
            Tensor Score(string name) { var (s, u) = expected[adapter.get_parameter(name)!]; return s * u; }
            // Triplet j: s(λ_j) + mean over its row of Q + mean over its column of P; the module: the mean over its triplets.
            var triplets = Score("lora_E").view(-1) + Score("lora_A").mean([1]) + Score("lora_B").mean([0]);
            Assert.Equal(triplets.mean().item<float>(), scores[i], 1e-6 * Math.Max(1, Math.Abs(scores[i])));
            Assert.True(scores[i] > 0, $"{Targets[i]} has a positive importance after three steps");
        }
    }

    [Fact]
    public void A_growth_adds_one_triplet_to_each_of_the_top_h_modules_only_and_leaves_the_output_unchanged()
    {
        using var scope = NewDisposeScope();
        manual_seed(2);
        var model = new Mlp();
        var peft = PeftModel.Create(model, new IncreLoraConfig { TargetModules = Targets, InitR = 2, TargetR = 4, InitLoraWeights = LoraInit.Random, Tinit = 0, DeltaT = 3, TopH = 2 });
        var allocator = IncreLoraAllocator.For(peft);
        var batches = Batches();
        model.train();
        for (int step = 0; step < 3; step++)
        {
            foreach (var p in model.parameters()) p.grad?.zero_();
            (functional.mse_loss(model.call(batches[step].X), batches[step].Y) + allocator.OrthogonalRegularizer()).backward();
            Assert.Empty(allocator.UpdateAndGrow(step));   // steps 0–2: step 0 is not past tinit, 1 and 2 are not multiples of deltaT
        }
        Assert.True(allocator.GrowsAt(3));
        model.eval();
        var before = model.call(batches[0].X);
        var ranksBefore = Targets.Select(t => Adapter(peft, t).Rank!.Value).ToArray();
        var scores = allocator.ModuleScores();
        var top = Enumerable.Range(0, Targets.Length).OrderByDescending(i => scores[i]).Take(2).Select(i => Targets[i]).ToList();
        Assert.True(scores.Distinct().Count() == scores.Length, "the three modules have different scores, so the top two are clear");

        var grown = allocator.GrowTop(2);
        Assert.Equal(top.Order(), grown.Order());
        for (int i = 0; i < Targets.Length; i++)
            Assert.Equal(ranksBefore[i] + (grown.Contains(Targets[i]) ? 1 : 0), Adapter(peft, Targets[i]).Rank);
        Assert.Equal(ranksBefore.Sum() + 2, allocator.Total);
        // The added λ is 0, so the model computes exactly what it did; the config's rank_pattern says the new ranks.
        Tensors.AssertClose(before, model.call(batches[0].X), 0, "output right after the growth");
        foreach (var path in grown) Assert.Equal(0, Adapter(peft, path).Blocks[^1].E.item<float>());
        var pattern = ((IncreLoraConfig)peft.Config("default")).RankPattern!;
        Assert.Equal(Targets.Select(t => Adapter(peft, t).Rank!.Value), Targets.Select(t => pattern[t]));
    }

    [Fact]
    public void The_tensors_that_trained_before_a_growth_keep_their_optimizer_moments_through_it()
    {
        // Two runs on the same data: one grows at step 2 (0-based), one never grows (target = start). The step after the
        // growth sees the same forward (the added λ is 0) and so the same gradients for the old tensors; their update is the
        // same only if AdamW kept their moments and step counts (a restart would move each entry by ±lr instead).
        using var scope = NewDisposeScope();
        Dictionary<string, Tensor> Run(int targetR, out TrainingLog log)
        {
            manual_seed(4);
            var model = new Mlp();
            var peft = PeftModel.Create(model, new IncreLoraConfig
            {
                TargetModules = Targets, InitR = 2, TargetR = targetR, Tinit = 0, DeltaT = 2, TopH = 3, OrthRegWeight = 0, AdvanceLearn = false, WarmupSteps = 0,
            });
            manual_seed(5);
            var batches = Batches();
            log = new Trainer().Fit(peft, _ => batches, b => functional.mse_loss(model.call(b.X), b.Y),
                                    new TrainerOptions { MaxSteps = 4, LearningRate = 1e-2, MaxGradientNorm = null });
            return peft.Layers.SelectMany(l => new[] { "lora_A", "lora_E", "lora_B" }.Select(n => (l.Path + "." + n, l["default"].get_parameter(n)!)))
                .ToDictionary(p => p.Item1, p => p.Item2.detach().clone());
        }
        var grown = Run(targetR: 3, out var grownLog);
        var fixedRank = Run(targetR: 2, out _);
        // Grown at the end of step 3 (1-based): step 4 is the first with the new tensors; none of the old ones left.
        var change = Assert.Single(grownLog.TrainableSetChanges);
        Assert.Equal(4, change.Step);
        Assert.Equal(3, change.Added.Count(n => n.Contains("lora_E_2")));
        Assert.Empty(change.Removed);
        foreach (var (name, value) in fixedRank)
            Tensors.AssertClose(value, grown[name], 1e-6, $"{name} after the step that followed the growth");
    }

    [Fact]
    public void An_added_singular_value_warms_up_its_learning_rate_from_one_warmup_step_of_it()
    {
        using var scope = NewDisposeScope();
        manual_seed(6);
        var model = new Mlp();
        const int warmup = 4;
        const double lr = 1e-2;
        var peft = PeftModel.Create(model, new IncreLoraConfig { TargetModules = Targets, InitR = 2, TargetR = 3, Tinit = 0, DeltaT = 2, TopH = 3, WarmupSteps = warmup });
        var batches = Batches();
        new Trainer().Fit(peft, _ => batches, b => functional.mse_loss(model.call(b.X), b.Y), new TrainerOptions { MaxSteps = 4, LearningRate = lr, MaxGradientNorm = null });
        // Added after step 3, λ = 0 and fresh moments: AdamW's first update is lr·scale·g/(|g| + ε), i.e. ±lr/warmup.
        foreach (var path in Targets)
        {
            var added = Adapter(peft, path).Blocks[^1].E;
            Assert.Equal(lr / warmup, Math.Abs(added.item<float>()), 1e-6);
        }
    }

    [Fact]
    public void Training_by_the_Trainer_grows_to_the_target_records_the_ranks_and_saves_and_reloads_the_grown_adapter()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var model = new Mlp();
        var peft = PeftModel.Create(model, new IncreLoraConfig { TargetModules = Targets, InitR = 1, TargetR = 3, Tinit = 2, DeltaT = 2, TopH = 2, LoraAlpha = 4 });
        var batches = Batches();
        var log = new Trainer().Fit(peft, _ => batches, b => functional.mse_loss(model.call(b.X), b.Y), new TrainerOptions { Epochs = 5, LearningRate = 1e-2 });
        Assert.Equal(20, log.Series("increlora_orth_reg").Count);
        var allocator = IncreLoraAllocator.Find(peft, "default")!;
        Assert.Equal(9, allocator.Total);
        var ranks = Targets.Select(t => Adapter(peft, t).Rank!.Value).ToList();
        Assert.Equal(9, ranks.Sum());
        // The log and RankAllocation.Of (what `#!peft ranks` draws) hold the allocation the method recorded.
        var allocation = log.RankAllocations["default"];
        Assert.Same(allocator.Allocation, RankAllocation.Of(peft));
        Assert.Equal(3, allocation.History[0].Ranks.Sum());
        Assert.Equal(ranks, allocation.Ranks);
        Assert.True(allocation.ChangesOverTime);

        model.eval();
        var x = batches[0].X;
        var expected = model.call(x);
        var directory = TempDirectory.Create();
        peft.Save(directory);
        manual_seed(3);
        var fresh = new Mlp();
        var reloaded = PeftModel.Load(fresh, directory);
        fresh.eval();
        Assert.Equal(ranks, Targets.Select(t => Adapter(reloaded, t).Rank!.Value).ToList());
        Tensors.AssertClose(expected, fresh.call(x), 1e-6, "output of the reloaded grown adapter");
        var header = PeftSharp.IO.SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.DoesNotContain(header.Tensors, t => t.Name.Contains("lora_A_"));   // the reserve and the blocks are one lora_A
    }

    [Fact]
    public void The_training_harness_trains_through_the_PeftModel_it_is_given_so_the_growth_runs_and_the_model_can_be_kept()
    {
        using var scope = NewDisposeScope();
        var batches = Batches();
        PeftModel? peft = null;
        Mlp? kept = null;
        var harness = new TrainingHarness<Mlp, (Tensor X, Tensor Y)>((_, _) => batches, (m, b) => functional.mse_loss(m.call(b.X), b.Y),
            m => -functional.mse_loss(m.call(batches[0].X), batches[0].Y).item<float>(), evaluationExamples: 4, metric: "-mse")
        { PeftOf = _ => peft, DisposeModels = false };
        var run = harness.Run("IncreLoRA", 1, () =>
        {
            var model = new Mlp();
            peft = PeftModel.Create(model, new IncreLoraConfig { TargetModules = Targets, InitR = 1, TargetR = 2, Tinit = 1, DeltaT = 2, TopH = 3 });
            return model;
        }, new TrainerOptions { MaxSteps = 4 }, m => kept = m);
        Assert.Equal(6, run.Log.RankAllocations["default"].TotalRank);   // grown at step 2 (0-based), through Fit(PeftModel)
        Assert.Equal(4, run.Log.Series("increlora_orth_reg").Count);
        // DisposeModels = false: the model is the caller's, still usable after the run.
        Assert.Equal(new long[] { 4, 3, 8 }, kept!.call(batches[0].X).shape);
        kept.Dispose();
    }

    [Fact]
    public void The_layer_by_module_heatmap_averages_the_final_ranks_of_several_runs()
    {
        var a = new RankAllocation("a", ["m.layers.0.q", "m.layers.0.v", "m.layers.1.q", "m.layers.1.v"], [1, 2, 3, 4], []);
        var b = a with { AdapterName = "b", Ranks = [3, 2, 1, 0] };
        var map = RankAllocation.LayerByModule([a, b], "final ranks");
        Assert.Equal(["m.layers.0", "m.layers.1"], map.Rows);
        Assert.Equal(["q", "v"], map.Columns);
        Assert.Equal([2.0, 2.0], map.Values[0]);
        Assert.Equal([2.0, 2.0], map.Values[1]);
        Assert.Contains("same layers", Assert.Throws<ArgumentException>(() => RankAllocation.LayerByModule([a, a with { Layers = ["x"], Ranks = [1] }], "t")).Message);
    }

    [Fact]
    public void Bad_IncreLoRA_settings_are_refused_naming_the_field_and_what_would_be_right()
    {
        var ok = new IncreLoraConfig { TargetModules = ["lin0"] };
        ok.Validate();
        Assert.Contains("at least init_r", Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { InitR = 4, TargetR = 2 }).Validate()).Message);
        Assert.Contains("beta2", Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { Beta2 = 0 }).Validate()).Message);
        var tooSmall = PeftModel.Create(new Mlp(), ok with { TargetModules = Targets, InitR = 2, TargetTotalRank = 5 });
        Assert.Contains("only adds rank", Assert.Throws<ArgumentException>(() => IncreLoraAllocator.For(tooSmall)).Message);
        var lora = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        Assert.Contains("not increlora", Assert.Throws<ArgumentException>(() => IncreLoraAllocator.For(lora)).Message);
    }
}

using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using static PeftSharp.Tests.PeftFixtures;

namespace PeftSharp.Tests;

/// <summary>
/// AdaLoRA against Hugging Face PEFT 0.20's own numbers and files (Fixtures/hf-peft-0.20/adalora_mlp_s0.json and
/// mlp_adalora/, see the README there: made by PEFT's AdaLoraModel, SVDLinear and RankAllocator), the budget schedule
/// against its closed form, the importance score against a direct computation, and allocation through the Trainer.
/// </summary>
public sealed class AdaLoraTests
{
    static readonly JsonObject Case = LoadFixture("adalora_mlp_s0.json");
    static readonly string[] TensorNames = ["lora_A", "lora_E", "lora_B"];

    static AdaLoraConfig FixtureConfig()
    {
        var k = Case["peft_config_kwargs"]!;
        return new AdaLoraConfig
        {
            TargetModules = TargetModules.List(k["target_modules"]!.AsArray().Select(t => t!.GetValue<string>())),
            InitR = k["init_r"]!.GetValue<int>(), TargetR = k["target_r"]!.GetValue<int>(), LoraAlpha = k["lora_alpha"]!.GetValue<double>(),
            Tinit = k["tinit"]!.GetValue<int>(), Tfinal = k["tfinal"]!.GetValue<int>(), DeltaT = k["deltaT"]!.GetValue<int>(),
            TotalStep = k["total_step"]!.GetValue<int>(), Beta1 = k["beta1"]!.GetValue<double>(), Beta2 = k["beta2"]!.GetValue<double>(),
            OrthRegWeight = k["orth_reg_weight"]!.GetValue<double>(),
        };
    }

    static Mlp BaseModel()
    {
        var model = new Mlp();
        CopyBaseWeights(model, Case);
        return model;
    }

    /// <summary>The fixture's MLP with PEFT's adapter tensors (random A, E, B) in our AdaLoRA layers.</summary>
    static (Mlp Model, PeftModel Peft) ReferenceModel()
    {
        var model = BaseModel();
        var peft = PeftModel.Create(model, FixtureConfig());
        using (no_grad())
            foreach (var layer in peft.Layers)
                foreach (var name in TensorNames)
                    layer["default"].get_parameter(name)!.copy_(Read(Case["adapter_state"]![AdapterFiles.KeyPrefix + layer.Path + "." + name]!));
        return (model, peft);
    }

    static AdaLoraLinearAdapter Adapter(PeftModel peft, string path) => (AdaLoraLinearAdapter)peft.Layers.Single(l => l.Path == path)["default"];

    [Fact]
    public void Outputs_merged_outputs_and_delta_weights_equal_PEFTs_for_the_same_tensors()
    {
        using var scope = NewDisposeScope();
        var (model, peft) = ReferenceModel();
        model.eval();
        var x = Read(Case["input"]!);
        using (peft.DisableAdapters()) Tensors.AssertClose(Read(Case["base_output"]!), model.call(x), 1e-6, "base output");
        Tensors.AssertClose(Read(Case["adapted_output"]!), model.call(x), 1e-6, "adapted output");
        foreach (var (path, delta) in Case["delta_weights"]!.AsObject())
            Tensors.AssertClose(Read(delta!), Adapter(peft, path).DeltaWeight(peft.Layers.Single(l => l.Path == path).BaseLayer), 1e-7, $"delta weight of {path}");
        peft.Merge();
        Tensors.AssertClose(Read(Case["merged_output"]!), model.call(x), 1e-6, "merged output");
    }

    [Fact]
    public void Gradients_of_the_loss_with_the_orthogonality_regulariser_equal_PEFTs()
    {
        using var scope = NewDisposeScope();
        var (model, peft) = ReferenceModel();
        model.train();
        var x = Read(Case["input"]!);
        var allocator = AdaLoraAllocator.For(peft);
        var task = functional.mse_loss(model.call(x), Read(Case["target"]!));
        var total = task + allocator.OrthogonalRegularizer();
        Assert.Equal(Case["task_losses"]![0]!.GetValue<double>(), task.item<float>(), 1e-6);
        Assert.Equal(Case["total_losses"]![0]!.GetValue<double>(), total.item<float>(), 1e-5);
        total.backward();
        foreach (var layer in peft.Layers)
            foreach (var name in TensorNames)
                Tensors.AssertClose(Read(Case["grads_step0"]![layer.Path + "." + name]!), layer["default"].get_parameter(name)!.grad!, 1e-5,
                    $"gradient of {layer.Path}.{name}");
    }

    [Fact]
    public void Training_with_allocation_follows_PEFT_step_by_step_budget_mask_and_rank_pattern()
    {
        using var scope = NewDisposeScope();
        var (model, peft) = ReferenceModel();
        model.train();
        var x = Read(Case["input"]!);
        var target = Read(Case["target"]!);
        var allocator = AdaLoraAllocator.For(peft);
        Assert.Equal(Case["init_budget"]!.GetValue<int>(), allocator.InitialBudget);
        Assert.Equal(Case["target_budget"]!.GetValue<int>(), allocator.TargetBudget);
        var optimizer = optim.SGD(model.parameters().Where(p => p.requires_grad), Case["sgd_lr"]!.GetValue<double>());
        var budgets = Case["budgets"]!.AsArray();
        var patterns = Case["rank_patterns"]!.AsArray();
        for (int step = 0; step < budgets.Count; step++)
        {
            using var stepScope = NewDisposeScope();
            // PEFT's loop: loss (with the regulariser) → backward → optimizer.step() → update_and_allocate(step) → zero_grad().
            var total = functional.mse_loss(model.call(x), target) + allocator.OrthogonalRegularizer();
            Assert.Equal(Case["total_losses"]![step]!.GetValue<double>(), total.item<float>(), 1e-5);
            total.backward();
            optimizer.step();
            Assert.Equal(budgets[step]!.GetValue<int>(), allocator.BudgetSchedule(step).Budget);
            allocator.UpdateAndAllocate(step);
            if (patterns[step] is JsonObject pattern)
                foreach (var (key, kept) in pattern)
                {
                    var path = key[..key.IndexOf(".lora_E", StringComparison.Ordinal)];
                    Assert.Equal(kept!.AsArray().Select(k => k!.GetValue<bool>()), allocator.Config.KeptAt(path)!);
                }
            else Assert.Null(allocator.Config.RankPattern);
            foreach (var (key, e) in Case["lora_E_after_step"]![step]!.AsObject())
                Tensors.AssertClose(Read(e!), Adapter(peft, key.Split('.')[0]).E, 1e-5, $"lora_E of {key} after step {step}");
            optimizer.zero_grad();
        }
        model.eval();
        Tensors.AssertClose(Read(Case["trained_output"]!), model.call(x), 1e-5, "output after training");
        Assert.Equal(allocator.TargetBudget, peft.Layers.Sum(l => l["default"].Rank!.Value));

        // The save is PEFT's: the same config fields and rank_pattern, the kept triplets only, the same values.
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var theirDirectory = Path.Combine(FixtureDirectory, "mlp_adalora");
        var theirs = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(theirDirectory, AdapterFiles.ConfigFileName)))!;
        var ours = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!;
        // auto_mapping names PEFT's Python class of the base model; peft_version is the mirror's 0.20.1.dev0, which also
        // added kasa_config (null) after the 0.20.0 release whose format we write.
        string[] notCompared = ["auto_mapping", "peft_version", "kasa_config"];
        Assert.Equal(theirs.Select(p => p.Key).Except(notCompared).Order(), ours.Select(p => p.Key).Except(notCompared).Order());
        foreach (var (key, value) in theirs.Where(p => !notCompared.Contains(p.Key)))
            Assert.True(key == "target_modules" ? value!.AsArray().Select(v => v!.GetValue<string>()).Order().SequenceEqual(ours[key]!.AsArray().Select(v => v!.GetValue<string>()).Order())
                                                : JsonNode.DeepEquals(value, ours[key]), $"{key}: PEFT wrote {value?.ToJsonString()}, we wrote {ours[key]?.ToJsonString()}.");
        var theirTensors = SafeTensors.Load(Path.Combine(theirDirectory, AdapterFiles.WeightsFileName));
        var ourTensors = SafeTensors.Load(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(theirTensors.Keys.Order(), ourTensors.Keys.Order());
        foreach (var (key, value) in theirTensors) Tensors.AssertClose(value, ourTensors[key], 1e-5, key);
    }

    [Fact]
    public void A_PEFT_directory_with_a_rank_pattern_loads_with_its_ranks_and_reproduces_PEFTs_outputs()
    {
        using var scope = NewDisposeScope();
        var model = BaseModel();
        var peft = PeftModel.Load(model, Path.Combine(FixtureDirectory, "mlp_adalora"));
        model.eval();
        foreach (var (path, rank) in Case["reloaded_ranks"]!.AsObject())
        {
            Assert.Equal(rank!.GetValue<int>(), Adapter(peft, path).R);
            Assert.Equal(Case["reloaded_ranknum"]![path]!.GetValue<double>(), Adapter(peft, path).RankNumber.item<float>());
        }
        var x = Read(Case["input"]!);
        Tensors.AssertClose(Read(Case["reloaded_output"]!), model.call(x), 1e-6, "output of the reloaded adapter");
        Tensors.AssertClose(Read(Case["trained_output"]!), model.call(x), 1e-6, "output of the adapter when it was saved");
        var config = Assert.IsType<AdaLoraConfig>(peft.Config("default"));
        Assert.Equal(6, config.InitR);
        Assert.Equal(3, config.RankAt("lin0"));
    }

    [Fact]
    public void Inspecting_PEFTs_pruned_AdaLoRA_directory_finds_its_modules_at_the_ranks_of_its_rank_pattern()
    {
        var inspection = AdapterInspection.Read(Path.Combine(FixtureDirectory, "mlp_adalora"));
        Assert.True(inspection.IsValid, string.Join("; ", inspection.Problems));
        Assert.Equal([("lin0", 3), ("lin1", 1)], inspection.Modules.Select(m => (m.Path, m.Rank!.Value)).OrderBy(m => m.Path));
    }

    [Fact]
    public void A_pruned_PEFT_adapter_trains_further_at_its_loaded_ranks_with_no_allocation_left_to_run()
    {
        using var scope = NewDisposeScope();
        var model = BaseModel();
        var peft = PeftModel.Load(model, Path.Combine(FixtureDirectory, "mlp_adalora"), trainable: true);
        var x = Read(Case["input"]!);
        var target = Read(Case["target"]!);
        var before = Adapter(peft, "lin0").E.detach().clone();
        var log = new Trainer().Fit(peft, _ => new[] { 0 }, _ => functional.mse_loss(model.call(x), target), new TrainerOptions { Epochs = 3 });
        Assert.Equal(3, log.Series("adalora_orth_reg").Count);
        Assert.True(AdaLoraAllocator.Find(peft, "default")!.IsPruned);
        Assert.Equal([3, 1], peft.Layers.Select(l => l["default"].Rank!.Value));
        Tensors.AssertDifferent(before, Adapter(peft, "lin0").E, "lin0's singular values after three steps");
    }

    [Fact]
    public void The_budget_schedule_is_its_closed_form_warm_up_cubic_decay_then_the_target()
    {
        // b(t) = b0 for t ≤ tinit; ⌊(b0 − bT)(1 − (t − tinit)/(T − tfinal − tinit))³ + bT⌋ in between; bT after T − tfinal.
        var config = new AdaLoraConfig { TargetModules = ["x"], InitR = 12, TargetR = 4, Tinit = 10, Tfinal = 20, DeltaT = 5, TotalStep = 100 };
        int b0 = 48, bT = 16, T = 100;
        var budgets = new List<int>();
        for (int t = 0; t < T; t++)
        {
            var (budget, mask) = AdaLoraAllocator.Schedule(t, b0, bT, config);
            double fraction = (double)(t - 10) / (T - 20 - 10);
            int expected = t <= 10 ? b0 : t > T - 20 ? bT : (int)Math.Floor((b0 - bT) * Math.Pow(1 - fraction, 3) + bT);
            Assert.Equal(expected, budget);
            Assert.Equal(t > 10 && (t > T - 20 || t % 5 == 0), mask);
            budgets.Add(budget);
        }
        Assert.Equal(b0, budgets[0]);
        Assert.Equal(bT, budgets[T - 20]);
        Assert.True(budgets.Zip(budgets.Skip(1)).All(p => p.Second <= p.First), "the budget never grows");
        // The cubic front-loads the pruning: more than half the removable rank is gone a quarter of the way (18 of 70
        // steps) into the budget phase, where a linear schedule would have removed a quarter.
        Assert.True(budgets[10 + 18] - bT < (b0 - bT) / 2, $"budget at step 28: {budgets[28]}");
    }

    [Fact]
    public void The_importance_score_is_the_product_of_the_smoothed_sensitivity_and_uncertainty()
    {
        using var scope = NewDisposeScope();
        var (model, peft) = ReferenceModel();
        model.train();
        var x = Read(Case["input"]!);
        var target = Read(Case["target"]!);
        var allocator = AdaLoraAllocator.For(peft);   // tinit 2, deltaT 2: steps 0–3 mask nothing
        var lin1 = Adapter(peft, "lin1");
        // Direct computation from the paper: I = |p·∇p|, Ī ← β1 Ī + (1 − β1) I, Ū ← β2 Ū + (1 − β2)|I − Ī|, s = Ī Ū.
        var expected = TensorNames.ToDictionary(n => n, n => (Sensitivity: zeros_like(lin1.get_parameter(n)!), Uncertainty: zeros_like(lin1.get_parameter(n)!)));
        var optimizer = optim.SGD(model.parameters().Where(p => p.requires_grad), 0.05);
        for (int step = 0; step < 4; step++)
        {
            optimizer.zero_grad();
            functional.mse_loss(model.call(x), target).backward();
            optimizer.step();
            using (no_grad())
                foreach (var name in TensorNames)
                {
                    var p = lin1.get_parameter(name)!;
                    var importance = (p * p.grad!).abs();
                    var sensitivity = 0.85 * expected[name].Sensitivity + 0.15 * importance;
                    expected[name] = (sensitivity, 0.85 * expected[name].Uncertainty + 0.15 * (importance - sensitivity).abs());
                }
            allocator.UpdateAndAllocate(step);
        }
        var score = expected.ToDictionary(p => p.Key, p => p.Value.Sensitivity * p.Value.Uncertainty);
        // A triplet i: s(E_i) + mean_j s(A_ij) + mean_k s(B_ki).
        var direct = score["lora_E"].view(-1) + score["lora_A"].mean([1]) + score["lora_B"].mean([0]);
        Tensors.AssertClose(direct, allocator.TripletScores(lin1), 1e-6, "triplet importance of lin1");
        Assert.True(direct.min().item<float>() > 0, "every triplet has a positive score after four steps");
        Assert.Null(allocator.Config.RankPattern);   // still in the warm-up: nothing masked
    }

    [Fact]
    public void An_adapter_trained_with_allocation_by_the_Trainer_saves_and_reloads_with_the_same_outputs_and_ranks()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var model = new Mlp();
        var config = new AdaLoraConfig
        {
            TargetModules = ["lin0", "lin1", "head"], InitR = 6, TargetR = 3, Tinit = 3, Tfinal = 4, DeltaT = 2, TotalStep = 20, LoraAlpha = 6,
        };
        var peft = PeftModel.Create(model, config);
        var x = randn(16, 3, 16);
        var y = randn(16, 3, 8);
        var batches = Enumerable.Range(0, 4).Select(i => (x[TensorIndex.Slice(4 * i, 4 * i + 4)], y[TensorIndex.Slice(4 * i, 4 * i + 4)])).ToList();
        var log = new Trainer().Fit(peft, _ => batches, b => functional.mse_loss(model.call(b.Item1), b.Item2),
                                    new TrainerOptions { Epochs = 5, LearningRate = 1e-2 });
        Assert.Equal(20, log.Steps.Count);
        Assert.Equal(20, log.Series("adalora_orth_reg").Count);

        var allocator = AdaLoraAllocator.Find(peft, "default")!;
        Assert.Equal(20, allocator.NextStep);
        var ranks = peft.Layers.Select(l => l["default"].Rank!.Value).ToList();
        Assert.Equal(allocator.TargetBudget, ranks.Sum());
        var kept = peft.Layers.Select(l => ((AdaLoraConfig)peft.Config("default")).KeptAt(l.Path)!.Count(k => k)).ToList();
        Assert.Equal(ranks, kept);
        // The pruned triplets' singular values are 0: the mask holds through the final phase.
        foreach (var layer in peft.Layers)
        {
            var adapter = (AdaLoraLinearAdapter)layer["default"];
            var dropped = tensor(adapter.Kept!.Select(k => !k).ToArray());
            Assert.Equal(0, adapter.E.view(-1).masked_select(dropped).abs().sum().item<float>());
        }
        // The log holds the allocation the method recorded: it starts at 18 triplets and ends at the target.
        var allocation = log.RankAllocations["default"];
        Assert.Equal(["lin0", "lin1", "head"], allocation.Layers);
        Assert.Equal(18, allocation.History[0].Ranks.Sum());
        Assert.Equal(allocator.TargetBudget, allocation.History[^1].Ranks.Sum());
        Assert.True(allocation.ChangesOverTime);

        model.eval();
        var expected = model.call(x);
        var directory = TempDirectory.Create();
        peft.Save(directory);
        manual_seed(3);
        var fresh = new Mlp();
        var reloaded = PeftModel.Load(fresh, directory);
        fresh.eval();
        Assert.Equal(ranks, reloaded.Layers.Select(l => ((AdaLoraLinearAdapter)l["default"]).R).ToList());
        Tensors.AssertClose(expected, fresh.call(x), 1e-6, "output of the reloaded adapter");
        var header = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.DoesNotContain(header.Tensors, t => t.Name.Contains("ranknum"));
    }

    [Fact]
    public void Bad_AdaLoRA_settings_are_refused_naming_the_field_and_what_would_be_right()
    {
        var ok = new AdaLoraConfig { TargetModules = ["lin0"], TotalStep = 10 };
        ok.Validate();
        Assert.Contains("total_step is required", Assert.Throws<ArgumentException>(() => (ok with { TotalStep = null }).Validate()).Message);
        Assert.Contains("budget phase", Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { Tinit = 6, Tfinal = 4 }).Validate()).Message);
        Assert.Contains("must not exceed init_r", Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { TargetR = 13 }).Validate()).Message);
        Assert.Contains("does not support DoRA", Assert.Throws<ArgumentException>(() => (ok with { UseDora = true }).Validate()).Message);
        Assert.Contains("beta1", Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { Beta1 = 1 }).Validate()).Message);
        var pattern = new Dictionary<string, IReadOnlyList<bool>> { ["lin0.lora_E"] = [true, false] };
        Assert.Contains("has 2 entries but init_r is 12", Assert.Throws<ArgumentException>(() => (ok with { RankPattern = pattern }).Validate()).Message);
        var badKey = new Dictionary<string, IReadOnlyList<bool>> { ["lin0"] = Enumerable.Repeat(true, 12).ToList() };
        Assert.Contains("'<module path>.lora_E'", Assert.Throws<ArgumentException>(() => (ok with { RankPattern = badKey }).Validate()).Message);
        var lora = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        Assert.Contains("not adalora", Assert.Throws<ArgumentException>(() => AdaLoraAllocator.For(lora)).Message);
    }
}

using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Methods.Routing;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using static PeftSharp.Tests.PeftFixtures;

namespace PeftSharp.Tests;

/// <summary>
/// Poly and MHR against Hugging Face PEFT 0.20 (Fixtures/hf-peft-0.20/mlp_poly*, mlp_mhr*, see the README there: the
/// numbers and directories were written by PEFT's own poly tuner), the routing formulas, task ids per row, the routing
/// views, and the MHR-z / MHR-μ helpers.
/// </summary>
public sealed class PolyTests
{

    static JsonObject Case(string name) => LoadFixture(name + ".json");

    static int[] TaskIds(JsonObject c) => c["task_ids"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray();

    static PolyConfig ConfigOf(JsonObject c)
    {
        var k = c["peft_config_kwargs"]!;
        return new PolyConfig
        {
            TargetModules = TargetModules.List(k["target_modules"]!.AsArray().Select(t => t!.GetValue<string>())),
            R = k["r"]!.GetValue<int>(), NTasks = k["n_tasks"]!.GetValue<int>(), NSkills = k["n_skills"]!.GetValue<int>(),
            NSplits = k["n_splits"]!.GetValue<int>(), InitWeights = k["init_weights"]!.GetValue<bool>(),
        };
    }

    static Mlp BaseModel(JsonObject c)
    {
        var model = new Mlp();
        CopyBaseWeights(model, c);
        model.eval();
        return model;
    }

    /// <summary>The fixture's base model with PEFT's adapter tensors copied in.</summary>
    static (Mlp Model, PeftModel Peft) ReferenceModel(JsonObject c)
    {
        var model = BaseModel(c);
        var peft = PeftModel.Create(model, ConfigOf(c));
        using (no_grad())
            foreach (var layer in peft.Layers)
                foreach (var (name, p) in layer["default"].named_parameters())
                    p.copy_(Read(c["adapter_state"]![AdapterFiles.KeyPrefix + layer.Path + "." + name]!));
        model.eval();
        return (model, peft);
    }

    [Theory, InlineData("mlp_poly"), InlineData("mlp_mhr")]
    public void Outputs_gradients_and_eval_routing_equal_PEFTs_for_the_same_tensors_and_task_ids(string name)
    {
        var c = Case(name);
        var (model, peft) = ReferenceModel(c);
        var x = Read(c["input"]!);
        var context = new ForwardContext { TaskIds = TaskIds(c) };
        using (peft.DisableAdapters()) Tensors.AssertClose(Read(c["base_output"]!), model.call(x), 1e-6, "base output");
        using (no_grad()) Tensors.AssertClose(Read(c["adapted_output"]!), peft.Forward(x, context), 1e-6, "adapted output");

        var loss = functional.mse_loss(peft.Forward(x, context), Read(c["target"]!));
        Assert.Equal(c["loss"]!.GetValue<double>(), loss.item<float>(), 1e-6);
        loss.backward();
        foreach (var layer in peft.Layers)
        {
            foreach (var (parameter, p) in layer["default"].named_parameters())
                Tensors.AssertClose(Read(c["grads"]![AdapterFiles.KeyPrefix + layer.Path + "." + parameter]!), p.grad!, 1e-6, $"gradient of {layer.Path}.{parameter}");
            using var routing = ((PolyAdapter)layer["default"]).Router.EvalRouting();
            Tensors.AssertClose(Read(c["eval_routing"]![layer.Path]!), routing, 1e-7, $"eval routing at {layer.Path}");
        }
        var report = peft.ParameterReport();
        Assert.Equal(c["trainable_params"]!.GetValue<long>(), report.TrainableParameters);
        Assert.Equal(c["all_params"]!.GetValue<long>(), report.AllParameters);
    }

    [Theory, InlineData("mlp_poly"), InlineData("mlp_mhr")]
    public void A_directory_written_by_PEFT_loads_and_reproduces_its_outputs_for_the_given_task_ids(string name)
    {
        var c = Case(name);
        var model = BaseModel(c);
        var peft = PeftModel.Load(model, Path.Combine(FixtureDirectory, name));
        var config = Assert.IsType<PolyConfig>(peft.Config("default"));
        Assert.Equal(ConfigOf(c) with { TargetModules = config.TargetModules }, config);
        using var output = peft.Forward(Read(c["input"]!), new ForwardContext { TaskIds = TaskIds(c) });
        Tensors.AssertClose(Read(c["adapted_output"]!), output, 1e-6, "output of the loaded PEFT directory");
    }

    [Theory, InlineData("mlp_poly"), InlineData("mlp_mhr")]
    public void A_directory_saved_here_has_exactly_PEFTs_config_fields_and_tensor_keys(string name)
    {
        var c = Case(name);
        var (_, peft) = ReferenceModel(c);
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var peftDirectory = Path.Combine(FixtureDirectory, name);

        var theirs = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(peftDirectory, AdapterFiles.ConfigFileName)))!;
        var ours = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!;
        Assert.Equal(theirs.Select(p => p.Key).Order(), ours.Select(p => p.Key).Order());
        // auto_mapping names PEFT's Python class of the base model; target_modules is a Python set, written in hash order.
        foreach (var (key, value) in theirs.Where(p => p.Key is not ("auto_mapping" or "target_modules")))
            Assert.True(JsonNode.DeepEquals(value, ours[key]), $"{key}: PEFT wrote {value?.ToJsonString()}, we wrote {ours[key]?.ToJsonString()}.");
        Assert.Equal(theirs["target_modules"]!.AsArray().Select(t => t!.GetValue<string>()).Order(), ours["target_modules"]!.AsArray().Select(t => t!.GetValue<string>()).Order());

        var theirKeys = SafeTensors.ReadHeader(Path.Combine(peftDirectory, AdapterFiles.WeightsFileName));
        var ourKeys = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(theirKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))), ourKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))));
        Assert.Equal(theirKeys.Metadata, ourKeys.Metadata);
    }

    [Fact]
    public void In_training_the_routing_is_PyTorchs_relaxed_Bernoulli_sample_normalised_over_the_skills()
    {
        var router = new PolyRouter(nTasks: 3, nSplits: 2, nSkills: 4, ScalarType.Float32, CPU);
        using (no_grad()) router.ModuleLogits.copy_(randn(3, 8) * 2);
        router.train();
        using var ids = tensor(new long[] { 2, 0, 2, 1, 1 });
        manual_seed(42);
        using var weights = router.MixingWeights(ids);                                      // (5, 2, 4)
        manual_seed(42);
        using var u = rand(5, 2, 4).to(ScalarType.Float64).clamp(1.1920928955078125e-07, 1 - 1.1920928955078125e-07);

        // z = sigmoid(logit(u) + logit(p)), p = sigmoid(Z_t); w = z / (Σ_k z + 1e-12), in float64.
        using var logits = router.ModuleLogits.detach().index_select(0, ids).view(-1, 2, 4).to(ScalarType.Float64);
        using var p = logits.sigmoid();
        using var z = (u.log() - (-u).log1p() + p.log() - (-p).log1p()).sigmoid();
        using var expected = z / (z.sum(-1, keepdim: true) + 1e-12);
        Tensors.AssertClose(expected, weights, 1e-6, "relaxed Bernoulli routing");
        // A second draw differs (it is a sample), and eval mode is deterministic.
        using var again = router.MixingWeights(ids);
        Tensors.AssertDifferent(weights, again, "two training draws");
    }

    [Fact]
    public void In_training_the_routing_equals_PEFTs_sample_for_the_same_seed()
    {
        var c = Case("mlp_poly");
        int seed = c["train_routing_seed"]!.GetValue<int>();
        manual_seed(seed);
        using var uniforms = rand(Read(c["uniforms_seed_1234"]!).shape);
        // The same generator: TorchSharp's libtorch draws what PyTorch drew from this seed.
        Tensors.AssertEqual(Read(c["uniforms_seed_1234"]!), uniforms, "torch.rand after manual_seed");

        var (_, peft) = ReferenceModel(c);
        var router = ((PolyAdapter)peft.Layers.Single(l => l.Path == "lin0")["default"]).Router;
        router.train();
        using var ids = tensor(TaskIds(c).Select(t => (long)t).ToArray());
        manual_seed(seed);
        using var weights = router.MixingWeights(ids);
        Tensors.AssertClose(Read(c["train_routing_lin0"]!), weights, 1e-6, "training routing of lin0");
    }

    [Fact]
    public void At_eval_the_routing_is_the_sigmoid_of_the_logits_normalised_over_the_skills()
    {
        var router = new PolyRouter(nTasks: 2, nSplits: 1, nSkills: 2, ScalarType.Float64, CPU);
        using (no_grad()) router.ModuleLogits.copy_(tensor(new double[,] { { 0, Math.Log(3) }, { -50, -50 } }));
        router.eval();
        using var weights = router.MixingWeights(tensor(new long[] { 0, 1, 0 }));
        // task 0: z = (1/2, 3/4) → w = (0.4, 0.6), less PEFT's 1e-12 in the denominator. Task 1: z = sigmoid(-50) ≈ 2e-22 each, and PEFT's 1e-12 in the
        // denominator dominates, so the weights are ≈ 2e-10, not 1/2: a task can switch every skill off.
        double tiny = 1 / (1 + Math.Exp(50)), off = tiny / (2 * tiny + PolyRouter.Eps), w0 = 0.5 / (1.25 + PolyRouter.Eps), w1 = 0.75 / (1.25 + PolyRouter.Eps);
        Assert.True(off < 1e-9);
        Tensors.AssertClose(tensor(new double[,,] { { { w0, w1 } }, { { off, off } }, { { w0, w1 } } }), weights, 1e-15, "eval routing");
        using var all = router.EvalRouting();
        Tensors.AssertClose(weights[0..2], all, 1e-12, "EvalRouting of every task");
    }

    static (Mlp Model, PeftModel Peft) ThreeTaskMhr()
    {
        manual_seed(5);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new PolyConfig { TargetModules = ["lin0", "lin1"], R = 2, NTasks = 3, NSkills = 3, NSplits = 2 });
        Tensors.PerturbAdapters(peft, "default", 0.5);
        return (model, peft);
    }

    [Fact]
    public void Each_row_is_routed_by_its_own_task_id()
    {
        var (_, peft) = ThreeTaskMhr();
        manual_seed(1);
        var x = randn(4, 3, 16);
        int[] tasks = [2, 0, 1, 2];
        using var mixed = peft.Forward(x, new ForwardContext { TaskIds = tasks });
        for (int i = 0; i < tasks.Length; i++)
        {
            using var alone = peft.Forward(x[i..(i + 1)], new ForwardContext { TaskIds = [tasks[i]] });
            Tensors.AssertClose(alone, mixed[i..(i + 1)], 1e-6, $"row {i} (task {tasks[i]})");
        }
        using var otherTask = peft.Forward(x[0..1], new ForwardContext { TaskIds = [1] });
        Tensors.AssertDifferent(otherTask, mixed[0..1], "row 0 as task 1 vs task 2");
    }

    [Fact]
    public void Missing_or_out_of_range_task_ids_are_refused_naming_the_layer()
    {
        var (model, peft) = ThreeTaskMhr();
        var x = randn(2, 16);
        var missing = Assert.Throws<InvalidOperationException>(() => model.call(x));
        Assert.Contains("'lin0'", missing.Message);
        Assert.Contains("n_tasks = 3", missing.Message);
        Assert.Contains("ForwardContext { TaskIds", missing.Message);
        var outOfRange = Assert.Throws<ArgumentOutOfRangeException>(() => peft.Forward(x, new ForwardContext { TaskIds = [0, 3] }));
        Assert.Contains("only 3 tasks available", outOfRange.Message);
    }

    [Fact]
    public void MHR_reports_a_task_by_skill_routing_matrix_per_head_to_the_context_and_the_routing_view()
    {
        var (_, peft) = ThreeTaskMhr();
        var context = new ForwardContext { TaskIds = [0, 1] };
        peft.Forward(randn(2, 16), context).Dispose();
        var routing = context.RoutingWeights("task");
        Assert.Equal(["lin0 (head 0)", "lin0 (head 1)", "lin1 (head 0)", "lin1 (head 1)"], routing.Layers.Select(l => l.Layer));
        foreach (var layer in routing.Layers)
        {
            Assert.Equal(["task 0", "task 1", "task 2"], layer.Rows);
            Assert.Equal(["skill 0", "skill 1", "skill 2"], layer.Experts);
            Assert.All(layer.Weights, w => Assert.Equal(1.0, w.Sum(), 6));
        }
        // Heads route differently (each has its own logits).
        Assert.NotEqual(routing.Layers[0].Weights[0], routing.Layers[1].Weights[0]);
        var collected = RoutingWeights.Collect(peft);
        Assert.Equal("task", collected.RowKind);
        Assert.Equal(routing.Layers.Select(l => l.Weights.SelectMany(w => w)), collected.Layers.Select(l => l.Weights.SelectMany(w => w)));
    }

    [Fact]
    public void An_MHR_layer_whose_features_do_not_split_evenly_is_refused_with_a_divisor_that_fits()
    {
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => PeftModel.Create(new Mlp(), new PolyConfig { TargetModules = ["lin0"], NSplits = 3 }));
        Assert.Contains("'lin0' (Linear 16 -> 32)", error.Message);
        Assert.Contains("such as 16", error.Message);
    }

    [Fact]
    public void MHR_z_trains_only_the_routing_over_a_copy_of_the_trained_inventory()
    {
        var (model, peft) = ThreeTaskMhr();
        var config = MultiHeadRouting.RoutingOnly(peft, "default", "few-shot", nTasks: 2);
        Assert.Equal(2, config.NTasks);
        Assert.Equal(["few-shot"], peft.ActiveAdapters);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.Equal(["lin0.adapters.few-shot.poly_router.module_logits", "lin1.adapters.few-shot.poly_router.module_logits"], trainable);
        foreach (var layer in peft.Layers)
        {
            var (source, target) = ((PolyAdapter)layer["default"], (PolyAdapter)layer["few-shot"]);
            Tensors.AssertEqual(source.InventoryA, target.InventoryA, $"{layer.Path} A");
            Tensors.AssertEqual(source.InventoryB, target.InventoryB, $"{layer.Path} B");
        }

        var before = Tensors.Snapshot(model);
        model.train();
        var optimizer = optim.Adam(model.parameters().Where(p => p.requires_grad), lr: 0.1);
        var x = randn(4, 16);
        for (int step = 0; step < 3; step++)
        {
            optimizer.zero_grad();
            using (peft.Use(new ForwardContext { TaskIds = [0, 1, 1, 0] })) model.call(x).pow(2).mean().backward();
            optimizer.step();
        }
        foreach (var (path, p) in model.named_parameters())
            Assert.True(Tensors.Same(before[path], p) != path.EndsWith("few-shot.poly_router.module_logits"), $"{path} changed = {!Tensors.Same(before[path], p)}.");
    }

    [Fact]
    public void MHR_mu_is_a_plain_LoRA_equal_to_the_inventory_under_uniform_routing()
    {
        var (model, peft) = ThreeTaskMhr();
        var x = randn(4, 3, 16);
        // Equal logits give w = 1/K (up to the 1e-12 in the normalisation): Poly with uniform routing.
        using (no_grad())
            foreach (var layer in peft.Layers) ((PolyAdapter)layer["default"]).Router.ModuleLogits.fill_(0.3);
        using var uniform = peft.Forward(x, new ForwardContext { TaskIds = [0, 1, 2, 0] });

        var config = MultiHeadRouting.AverageInventory(peft, "default", "mu");
        Assert.Equal((2, 1.0), (config.R, config.LoraAlpha));
        Assert.Equal(["mu"], peft.ActiveAdapters);
        using var averaged = model.call(x);
        Tensors.AssertClose(uniform, averaged, 1e-6, "MHR-μ LoRA vs uniform routing");

        var directory = TempDirectory.Create();
        peft.Save(directory, adapterNames: ["mu"]);
        var saved = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, "mu", AdapterFiles.ConfigFileName)))!;
        Assert.Equal("LORA", saved["peft_type"]!.GetValue<string>());
    }
}

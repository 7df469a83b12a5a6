using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.Events;
using PeftSharp.Adapters;

namespace PeftSharp.Interactive.Tests;

public sealed class MagicCommandTests
{
    const string NewModel = "torch.manual_seed(0); var model = new Mlp(16, 32, 8); var x = torch.randn(4, 16);";

    [Fact]
    public async Task Attach_creates_the_adapted_model_variable_and_shows_its_summary()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        var html = await k.Ok("#!peft attach --model model --method lora --targets lin0,lin1 --rank 4 --alpha 8");
        Assert.Contains("Attached lora 'default' to 2 layer(s)", html);
        Assert.Contains("lin1", html);
        var peft = k.Value<PeftModel>("peft");
        Assert.Equal(2, peft.Layers.Count);
        Assert.Equal(4, peft.Layers[0]["default"].Rank);
        Assert.Contains("trainable params", await k.Ok("#!peft summary --model peft"));
        // --model may also name the plain module once it has adapters.
        Assert.Contains("lin0", await k.Ok("#!peft summary --model model"));
        // A second attach adds an adapter to the same model.
        Assert.Contains("Added adapter 'second'", await k.Ok("#!peft attach --model peft --targets lin0 --rank 2 --name second --rslora"));
        Assert.Equal(["default", "second"], peft.AdapterNames);
    }

    [Fact]
    public async Task Bad_input_fails_with_a_message_naming_the_mistake_and_the_kernel_keeps_working()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        Assert.Contains("No variable 'modle'", await k.Fails("#!peft attach --model modle --targets lin0"));
        Assert.Contains("model", await k.Fails("#!peft attach --model modle --targets lin0"));
        Assert.Contains("Unknown method 'lroa'", await k.Fails("#!peft attach --model model --method lroa --targets lin0"));
        Assert.Contains("lora, dora", await k.Fails("#!peft attach --model model --method lroa --targets lin0"));
        // PEFT accepts a rank above min(out, in) for LoRA (the summary notes it); a decomposition init cannot take it.
        var rank = await k.Fails("#!peft attach --model model --method pissa --targets lin0 --rank 64");
        Assert.Contains("does not fit 'lin0'", rank);
        Assert.Contains("at most 16", rank);
        Assert.Contains("whole number", await k.Fails("#!peft attach --model model --targets lin0 --rank four"));
        var nothing = await k.Fails("#!peft attach --model model --targets lin3");
        Assert.Contains("matched no module", nothing);
        Assert.Contains("lin0", nothing);
        Assert.Contains("--targets is required", await k.Fails("#!peft attach --model model"));
        Assert.Contains("not a model", await k.Fails("var text = \"hi\";\n#!peft summary --model text"));
        Assert.Contains("no adapters yet", await k.Fails("#!peft summary --model model"));
        Assert.Contains("#!peft attach --model model", await k.Fails("#!peft ranks --model model"));
        var missing = await k.Fails("#!peft load --model model --path /nonexistent/adapter");
        Assert.Contains("No adapter directory", missing);
        // None of it left an adapter behind, and the kernel still runs code.
        Assert.DoesNotContain(k.CSharp.ScriptState.Variables, v => v.Name == "peft");
        var events = await k.Submit("1 + 1");
        Assert.Equal(2, events.OfType<ReturnValueProduced>().Single().Value);
        Assert.DoesNotContain("   at ", await k.Fails("#!peft attach --model model --targets lin3"));
        Assert.DoesNotContain("(Parameter", await k.Fails("#!peft attach --model model --method lroa --targets lin0"));
        Assert.DoesNotContain("Actual value", await k.Fails("#!peft attach --model model --method pissa --targets lin0 --rank 64"));
        Assert.DoesNotContain("Actual value", await k.Fails("#!peft attach --model model --targets lin0 --rank 0"));
    }

    [Fact]
    public async Task Unknown_subcommand_or_parameter_is_reported_by_the_kernel()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        var typo = await k.Fails("#!peft attach --model model --targets lin0 --rnk 4");
        Assert.Contains("unknown parameter '--rnk' (did you mean --rank?)", typo);
        Assert.Contains("2 matched", await k.Ok("#!peft targets --model model --targets \"re:lin0|head\""));
        Assert.NotEmpty(await k.Fails("#!peft atach --model model"));
        var help = await k.Ok("#!peft");
        Assert.Contains("attach", help);
        Assert.Contains("--targets", help);
    }

    [Fact]
    public async Task Targets_previews_without_changing_the_model()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        var html = await k.Ok("#!peft targets --model model --targets \"re:lin[01]\"");
        Assert.Contains("2 matched", html);
        Assert.Contains("head", html);
        Assert.Empty(k.Value<PeftSharp.Models.Mlp>("model").named_modules().Select(m => m.module).OfType<AdapterLayer>());
        Assert.Contains("all-linear", await k.Ok("#!peft targets --model model --targets all-linear"));
    }

    [Fact]
    public async Task Merge_and_unmerge_keep_the_output_and_flip_the_merged_flag()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --targets lin0,lin1 --rank 4 --init false");
        await k.Ok("var before = model.call(x);");
        Assert.Contains("Merged", await k.Ok("#!peft merge --model peft --safe"));
        Assert.True(k.Value<PeftModel>("peft").Layers.All(l => l.IsMerged));
        var same = await k.Submit("(model.call(x) - before).abs().max().item<float>() < 1e-5");
        Assert.True((bool)same.OfType<ReturnValueProduced>().Single().Value!);
        Assert.Contains("Restored", await k.Ok("#!peft unmerge --model peft"));
        Assert.True(k.Value<PeftModel>("peft").Layers.All(l => !l.IsMerged));
        Assert.Contains("No adapter named 'nope'", await k.Fails("#!peft merge --model peft --adapters nope"));
    }

    [Fact]
    public async Task Save_then_load_gives_the_same_adapter()
    {
        using var k = await TestKernel.StartAsync();
        var dir = Path.Combine(Path.GetTempPath(), "peftsharp-interactive-tests", Guid.NewGuid().ToString("N"));
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --targets lin0 --rank 2 --init false");
        Assert.Contains("adapter_model.safetensors", await k.Ok($"#!peft save --model peft --path {dir}"));
        Assert.True(File.Exists(Path.Combine(dir, "adapter_config.json")));
        await k.Ok("torch.manual_seed(0); var fresh = new Mlp(16, 32, 8);");
        Assert.Contains("Loaded", await k.Ok($"#!peft load --model fresh --path {dir} --as loaded"));
        var same = await k.Submit("(fresh.call(x) - model.call(x)).abs().max().item<float>() < 1e-6");
        Assert.True((bool)same.OfType<ReturnValueProduced>().Single().Value!);
        // A wrong file: a directory that is not an adapter.
        Directory.CreateDirectory(Path.Combine(dir, "empty"));
        Assert.Contains("has no adapter_config.json", await k.Fails($"#!peft load --model fresh --path {Path.Combine(dir, "empty")} --name other"));
    }

    [Fact]
    public async Task Spectrum_ranks_routing_and_methods_show_their_views()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        Assert.Contains("W at lin0", await k.Ok("#!peft spectrum --model model --layer lin0"));
        await k.Ok("#!peft attach --model model --targets lin0,lin1 --rank 3 --init false");
        var deltas = await k.Ok("#!peft spectrum --model peft");
        Assert.Contains("ΔW of adapter 'default' at lin0", deltas);
        Assert.Contains("ΔW of adapter 'default' at lin1", deltas);
        Assert.Contains(ChartHtml.ChartClass, deltas);
        Assert.Contains("W + ΔW", await k.Ok("#!peft spectrum --model peft --layer lin1 --of adapted"));
        Assert.Contains("delta, weight, adapted, full-delta or kronecker", await k.Fails("#!peft spectrum --model peft --of gradient"));
        Assert.Contains("No module 'lin7'", await k.Fails("#!peft spectrum --model peft --layer lin7"));
        // The new views: a full fine-tuning delta against a copy of the model, the Kronecker spectrum, energy and elbow marks.
        await k.Ok("torch.manual_seed(0); var before = new Mlp(16, 32, 8); torch.manual_seed(0); var tuned = new Mlp(16, 32, 8); using (torch.no_grad()) tuned.parameters().First().add_(torch.randn(32, 16) * 0.1f);");
        var full = await k.Ok("#!peft spectrum --model tuned --reference before --layer lin0 --of full-delta --energy 0.9");
        Assert.Contains("ΔW of full fine-tuning at lin0", full);
        Assert.Contains("90% energy at k =", full);
        Assert.Contains("elbow at k =", full);
        var kron = await k.Ok("#!peft spectrum --model model --layer lin1 --of kronecker --grid 4x8");
        Assert.Contains("Kronecker spectrum R(W) at lin1", kron);
        Assert.Contains("m1 dividing 32", await k.Fails("#!peft spectrum --model model --layer lin1 --of kronecker --grid 5x8"));
        Assert.Contains("--reference", await k.Fails("#!peft spectrum --model tuned --layer lin0 --of full-delta"));
        Assert.Contains("(0, 1]", await k.Fails("#!peft spectrum --model model --layer lin0 --energy 1.5"));

        Assert.Contains("total rank 6", await k.Ok("#!peft ranks --model peft"));
        Assert.Contains("routes between experts", await k.Fails("#!peft routing --model peft"));
        await k.Ok("var routing = new RoutingWeights([new RoutingLayer(\"lin0\", [\"a\", \"b\"], [\"e0\", \"e1\"], [[0.9, 0.1], [0.2, 0.8]])], \"task\");");
        Assert.Contains("routing at lin0", await k.Ok("#!peft routing --weights routing"));

        var methods = await k.Ok("#!peft methods");
        Assert.Contains("dora", methods);
        Assert.Contains("--rank", methods);
        Assert.Contains("Unknown method", await k.Fails("#!peft methods --method nope"));
    }

    [Fact]
    public async Task Routing_draws_the_task_by_skill_matrix_of_every_MHR_head()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --method mhr --targets lin0 --rank 2 --tasks 3 --skills 4 --splits 2");
        var html = await k.Ok("#!peft routing --model peft");
        Assert.Contains("routing at lin0 (head 0)", html);
        Assert.Contains("routing at lin0 (head 1)", html);
        Assert.Contains("4 experts, by task", html);
    }

    [Fact]
    public async Task Attach_summary_targets_and_merge_handle_bottleneck_scaling_and_prompt_methods()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok("""
            using PeftSharp.Models.Bert; using PeftSharp.Models.Gpt;
            torch.manual_seed(0);
            var bert = new BertModel(new BertConfig { VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 32 });
            var gpt = new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 });
            """);
        // A bottleneck preset without --targets goes where its paper puts it (Pfeiffer: after each layer's FFN output).
        Assert.Contains("encoder.layer.1.output.dense", await k.Ok("#!peft targets --model bert --method pfeiffer"));
        var pfeiffer = await k.Ok("#!peft attach --model bert --method pfeiffer --size 4 --as bertPeft");
        Assert.Contains("Attached pfeiffer 'default' to 2 layer(s) of 'bert'", pfeiffer);
        Assert.Contains("encoder.layer.1.output.dense", pfeiffer);
        Assert.Contains("Added adapter 'scales' (ia3)", await k.Ok("#!peft attach --model bertPeft --method ia3 --targets key,value --name scales"));
        var summary = await k.Ok("#!peft summary --model bertPeft");
        Assert.Contains("ia3", summary);
        Assert.Contains("encoder.layer.0.attention.self.key", summary);
        // What cannot merge says so, naming the adapter and the layer.
        var merge = await k.Fails("#!peft merge --model bertPeft --adapters default");
        Assert.Contains("Adapter 'default'", merge);
        Assert.Contains("cannot be merged", merge);

        // Prompts and prefixes go into the model's hooks; the summary lists them with their parameters (5 × 16).
        var prompt = await k.Ok("#!peft attach --model gpt --method prompt-tuning --tokens 5 --as gptPeft");
        Assert.Contains("Attached prompt-tuning 'default' to the prompt hooks of 'gpt'", prompt);
        Assert.Contains("prompt-tuning", prompt);
        Assert.Contains(">80<", prompt);
        Assert.Contains("Added adapter 'prefix' (prefix-tuning)", await k.Ok("#!peft attach --model gptPeft --method prefix-tuning --tokens 3 --name prefix"));
        Assert.Contains("leave out --targets", await k.Fails("#!peft attach --model gptPeft --method prefix-tuning --targets q_proj --name p2"));
        Assert.Contains("no targets to preview", await k.Fails("#!peft targets --model gpt --method prompt-tuning"));
        Assert.Contains("--targets is required", await k.Fails("#!peft attach --model gptPeft --method lora --name l"));
        Assert.Contains("cannot be merged", await k.Fails("#!peft merge --model gptPeft --adapters default"));
    }

    /// <summary>What the kernel offers at the end of <paramref name="code"/>.</summary>
    static async Task<IReadOnlyList<string>> Completions(TestKernel k, string code)
    {
        var result = await k.Root.SendAsync(new RequestCompletions(code, new Microsoft.DotNet.Interactive.LinePosition(0, code.Length)));
        return result.Events.OfType<CompletionsProduced>().SelectMany(c => c.Completions).Select(c => c.DisplayText).ToList();
    }

    [Fact]
    public async Task Completions_offer_method_names_and_model_variables()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        Task<IReadOnlyList<string>> Complete(string code) => Completions(k, code);
        Assert.Contains("lora", await Complete("#!peft attach --method "));
        Assert.Contains("model", await Complete("#!peft summary --model "));
        Assert.Contains("attach", await Complete("#!peft "));
    }

    [Fact]
    public async Task Completions_after_dashes_offer_the_chosen_methods_own_options_and_their_values()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        Task<IReadOnlyList<string>> Complete(string code) => Completions(k, code);
        var pfeiffer = await Complete("#!peft attach --model model --method pfeiffer --");
        Assert.Contains("--reduction", pfeiffer);
        Assert.Contains("--residual", pfeiffer);
        Assert.Contains("--targets", pfeiffer);
        Assert.DoesNotContain("--rank", pfeiffer);
        var lora = await Complete("#!peft attach --model model --r");
        Assert.Contains("--rank", lora);
        Assert.Contains("--rslora", lora);
        Assert.DoesNotContain("--reduction", lora);
        Assert.Equal(["before", "after", "post_add"], await Complete("#!peft attach --model model --method houlsby --residual "));
        Assert.Contains("pissa", await Complete("#!peft attach --model model --method lora --init "));
        var prompt = await Complete("#!peft attach --model model --method prompt-tuning --");
        Assert.Contains("--tokens", prompt);
        Assert.Contains("--init", prompt);
        Assert.DoesNotContain("--rank", prompt);
    }

    /// <summary>How each registered method attaches on a small model, with its own options; the test fails for a method
    /// that has no line here, so a new method is also tried through the magic command.</summary>
    static readonly Dictionary<string, string> AttachLines = new()
    {
        ["lora"] = "--model mlp --targets lin0 --rank 2",
        ["dora"] = "--model mlp --targets lin0 --rank 2",
        ["pissa"] = "--model mlp --targets lin0 --rank 2 --init pissa_niter_2",
        ["olora"] = "--model mlp --targets lin0 --rank 2",
        ["bottleneck"] = "--model mlp --targets lin0 --size 4 --scaling learned",
        ["pfeiffer"] = "--model bert --size 4 --residual after",
        ["houlsby"] = "--model bert --reduction 4",
        ["parallel-adapter"] = "--model bert --size 4 --parallel-input layer",
        ["conv-adapter"] = "--model bert --targets re:.*output\\.dense --size 4 --kernel 5",
        ["compacter"] = "--model bert --size 4 --phm-dim 2",
        ["compacter++"] = "--model bert --size 4 --phm-dim 2",
        ["invertible"] = "--model bert --targets embeddings.LayerNorm --reduction 2",
        ["bitfit"] = "--model mlp",
        ["ln-tuning"] = "--model bert --targets LayerNorm",
        ["prompt-tuning"] = "--model gpt --tokens 3 --init sample_vocab",
        ["prefix-tuning"] = "--model gpt --tokens 3 --projection --hidden 8",
        ["scalearn"] = "--model sources --targets lin0 --sources a,b --kind scalar_shared",
        ["adapter-fusion"] = "--model sources --targets lin0 --sources a,b",
        ["ia3"] = "--model mlp --targets lin0,lin1 --feedforward lin1",
        ["adalora"] = "--model mlp --targets lin0,lin1 --init-r 4 --target-r 2 --total-step 20",
        ["increlora"] = "--model mlp --targets lin0,lin1 --init-r 1 --target-r 2 --delta-t 5",
        ["sorsa"] = "--model mlp --targets lin0 --rank 2 --gamma 0.001",
        ["svfit"] = "--model mlp --targets lin0,lin1 --energy 0.9",
        ["loldu"] = "--model mlp --targets lin0 --rank 3",
        ["hydra"] = "--model mlp --targets lin0 --rank 2 --branches sequential",
        ["soka"] = "--model mlp --targets lin0,lin1 --select elbow",
        ["transformed-lora"] = "--model mlp --targets lin0 --rank 2 --tt-rank 3",
        ["corda"] = "--model mlp --targets lin0 --rank 2 --calibration batches",
        ["corda-kpm"] = "--model mlp --targets lin0,lin1 --rank 2 --calibration batches",
        ["spt"] = "--model mlp --targets lin0,lin1 --budget 120 --threshold 60 --rank 2 --calibration calibrateMlp",
        ["poly"] = "--model mlp --targets lin0,lin1 --rank 2 --tasks 3 --skills 4",
        ["mhr"] = "--model mlp --targets lin0 --rank 2 --tasks 3 --splits 4",
        ["mtlora"] = "--model mlp --targets lin0,lin1 --rank 2 --task-rank 1 --tasks 3",
        ["earth-adapter"] = "--model bert --targets re:.*output\\.dense --size 4 --cutoff 0.4",
        ["mola"] = "--model gpt --targets down_proj --rank 2 --experts 3 --top-k 2 --allocation inverted_triangle",
    };

    [Fact]
    public async Task Every_registered_method_attaches_through_the_magic_command_with_its_own_options()
    {
        var missing = PeftSharp.Methods.MethodList.All.Select(m => m.Name).Where(n => !AttachLines.ContainsKey(n) && n != "toy-scale").ToList();
        Assert.True(missing.Count == 0, $"No #!peft attach line for {string.Join(", ", missing)}: add one to AttachLines.");
        using var k = await TestKernel.StartAsync();
        await k.Ok("""
            using PeftSharp.Models.Bert; using PeftSharp.Models.Gpt;
            using PeftSharp.Methods.LowRank;
            torch.manual_seed(0);
            torch.nn.Module NewBert() => new BertModel(new BertConfig { VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 32 });
            torch.nn.Module NewGpt() => new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 });
            """);
        foreach (var (method, line) in AttachLines)
        {
            // A fresh model per method; the composition methods need two source adapters first.
            await k.Ok("""
                var mlp = new Mlp(16, 32, 8); var bert = NewBert(); var gpt = NewGpt(); var sources = new Mlp(16, 32, 8);
                var batches = new[] { torch.randn(8, 16), torch.randn(4, 16) };
                var sourcesPeft = PeftModel.Create(sources, new LoraConfig { TargetModules = ["lin0"], R = 2 }, "a");
                sourcesPeft.AddAdapter("b", new LoraConfig { TargetModules = ["lin0"], R = 2 });
                Action calibrateMlp = () => { for (int i = 0; i < 2; i++) mlp.call(torch.randn(4, 16)).square().mean().backward(); };
                """);
            var html = await k.Ok($"#!peft attach --method {method} {line} --as attached");
            Assert.True(html.Contains($"{method} 'default'") || html.Contains($"'default' ({method})"), $"{method}: {html[..Math.Min(300, html.Length)]}");
        }
        // CorDA needs the input batches to compute its covariance; without them the command says how to give them.
        await k.Ok("var plain = new Mlp(16, 32, 8);");
        Assert.Contains("--calibration", await k.Fails("#!peft attach --model plain --method corda --targets lin0 --as c2"));
        Assert.Contains("leave out --calibration", await k.Fails("#!peft attach --model plain --method lora --targets lin0 --calibration batches --as c3"));
    }

    [Fact]
    public async Task SPT_through_the_magic_command_asks_for_its_calibration_action_and_its_sensitivity_map_draws_as_a_heatmap()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok("var mlp = new Mlp(16, 32, 8); Action calib = () => { for (int i = 0; i < 2; i++) mlp.call(torch.randn(4, 16)).square().mean().backward(); };");
        var missing = await k.Fails("#!peft attach --model mlp --method spt --targets lin0,lin1 --budget 50");
        Assert.Contains("--calibration", missing);
        var notAnAction = await k.Fails("#!peft attach --model mlp --method spt --targets lin0,lin1 --budget 50 --calibration mlp");
        Assert.Contains("holding an Action", notAnAction);
        var html = await k.Ok("using PeftSharp.Adapters; var map = Sensitivity.Measure(mlp, [\"lin0\", \"lin1\", \"head\"], calib); map.Heatmap(100)");
        Assert.Contains("\"type\":\"heatmap\"", html);
        Assert.Contains("sensitive entries (top 100 of 1792)", html);
    }

    [Fact]
    public async Task Profile_shows_where_a_training_steps_time_and_memory_go_and_leaves_the_weights_unchanged()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --targets lin0,lin1 --rank 4");
        await k.Ok("Func<Tensor> loss = () => model.call(x).pow(2).mean(); var before = model.call(x).detach().clone();");
        var html = await k.Ok("#!peft profile --model peft --loss loss --steps 2");
        Assert.Contains("peftsharp-profile", html);
        Assert.Contains("backward: modules", html);
        Assert.Contains("optimizer state", html);
        Assert.Contains("lin0", html);
        Assert.Contains(ChartHtml.ChartClass, html);
        var unchanged = await k.Submit("(model.call(x) - before).abs().max().item<float>()");
        Assert.Equal(0f, unchanged.OfType<ReturnValueProduced>().Single().Value);

        Assert.Contains("--loss is required", await k.Fails("#!peft profile --model peft"));
        Assert.Contains("Func<Tensor>", await k.Fails("var notALoss = 3;\n#!peft profile --model peft --loss notALoss"));
        Assert.Contains("No variable 'lose'", await k.Fails("#!peft profile --model peft --loss lose"));
        Assert.Contains("from 1 to 100", await k.Fails("#!peft profile --model peft --loss loss --steps many"));
        await k.Ok("foreach (var p in model.parameters()) p.requires_grad = false;");
        Assert.Contains("requires_grad", await k.Fails("#!peft profile --model model --loss loss"));
    }

    [Fact]
    public async Task Ranks_on_a_live_AdaLoRA_model_draw_the_allocation_it_made_while_training()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --method adalora --targets lin0,lin1 --init-r 6 --target-r 2 --tinit 2 --tfinal 3 --total-step 16");
        await k.Ok("""
            var y = torch.randn(4, 8);
            var log = new Trainer().Fit(peft, e => new[] { 0 }, _ => torch.nn.functional.mse_loss(model.call(x), y), new TrainerOptions { Epochs = 16, LearningRate = 1e-2 });
            """);
        var html = await k.Ok("#!peft ranks --model peft");
        // 12 triplets at the start, the target budget of 2 × 2 at the end, with the steps between recorded.
        Assert.Contains("total rank 4", html);
        Assert.Contains("steps recorded", html);
        Assert.Contains("\"type\":\"heatmap\"", html);
        Assert.Contains("\"type\":\"bar\"", html);
        Assert.Contains("final ranks of 'default'", html);
        Assert.Contains("step 0", html);
        Assert.Equal(4, k.Value<PeftSharp.Training.TrainingLog>("log").RankAllocations["default"].TotalRank);
    }

    [Fact]
    public async Task The_live_view_updates_in_place_while_training()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(NewModel);
        await k.Ok("#!peft attach --model model --targets lin0 --rank 2");
        var events = await k.Submit("""
            var trainer = new Trainer();
            var y = torch.randn(4, 8);
            TrainingLog log;
            using (LiveTrainingView.Show(trainer, "demo", TimeSpan.Zero))
                log = trainer.Fit(model, e => new[] { 0 }, _ => torch.nn.functional.mse_loss(model.call(x), y), new TrainerOptions { Epochs = 5 });
            log
            """);
        Assert.Empty(events.OfType<CommandFailed>());
        var produced = events.OfType<DisplayedValueProduced>().First(e => TestKernel.Html([e]).Contains("peftsharp-live"));
        var updates = events.OfType<DisplayedValueUpdated>().Where(u => u.ValueId == produced.ValueId).ToList();
        Assert.True(updates.Count >= 5, $"{updates.Count} updates");
        Assert.Contains("step 5/5", TestKernel.Html([updates[^1]]));
        Assert.Contains("steps/s", TestKernel.Html([updates[^1]]));
        Assert.Contains("<polyline", TestKernel.Html([updates[^1]]));
        // The returned log renders with its loss chart.
        Assert.Contains("5 steps", TestKernel.Html(events.OfType<ReturnValueProduced>()));
    }
}

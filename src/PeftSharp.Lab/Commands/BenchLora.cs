using System.Diagnostics;
using System.Text.Json;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>bench lora</c>: on a pre-LN transformer (d_model 512, 4 layers, 8 heads, FFN 2048) and a (32, 128, 512) input,
/// measures in one process the median time and the peak memory of base inference, a head-only training step, a LoRA
/// r=8 (q, k, v, o, fc1, fc2) training step, a full fine-tuning step, unmerged LoRA inference and merged inference.
/// The configurations run interleaved, round after round, so drift of the machine touches all alike. Prints one JSON
/// line with the ratios the issue sets targets for, each configuration's min/median/max and the ratios round by round.
/// With <c>--profile</c>, first prints a <see cref="TrainingProfile"/> of each training configuration.
/// </summary>
static class BenchLora
{
    public static int Run(Arguments arguments)
    {
        bool quick = arguments.Flag("quick");
        bool profile = arguments.Flag("profile");
        int rounds = arguments.Int("repeats", quick ? 2 : 5);
        int threads = arguments.Int("threads", 2);
        double dropout = arguments.Number("lora-dropout", 0);   // PEFT's default is 0; 0.05-0.1 is common in practice
        if (dropout >= 1) throw new ArgumentException($"--lora-dropout is a probability below 1, such as 0.1, not {dropout}.");
        set_num_threads(threads);
        var options = new TransformerOptions(DModel: 512, Heads: 8, Ffn: 2048, Layers: 4, Outputs: 16);
        long batch = quick ? 4 : 32, length = quick ? 32 : 128;

        manual_seed(0);
        var input = randn(batch, length, options.DModel);
        var target = randn(batch, length, options.Outputs);

        // One model per configuration, all with the same base weights.
        TinyTransformer NewModel()
        {
            manual_seed(1);
            var m = new TinyTransformer(options);
            m.eval();
            return m;
        }
        var loraConfig = new LoraConfig { TargetModules = ["q", "k", "v", "o", "fc1", "fc2"], R = 8, LoraAlpha = 16, LoraDropout = dropout };

        var fullModel = NewModel();
        var full = Optimizer(fullModel);

        var headModel = NewModel();
        foreach (var (name, p) in headModel.named_parameters()) p.requires_grad = name.StartsWith("head.", StringComparison.Ordinal);
        var head = Optimizer(headModel);

        var loraModel = NewModel();
        var loraPeft = PeftModel.Create(loraModel, loraConfig);
        PerturbB(loraPeft);
        var lora = Optimizer(loraModel);

        var mergedModel = NewModel();
        var mergedPeft = PeftModel.Create(mergedModel, loraConfig);
        PerturbB(mergedPeft);
        mergedPeft.Merge();

        var baseModel = NewModel();
        var configurations = new (string Name, Action Run)[]
        {
            ("base_inference", () => Infer(baseModel, input)),
            ("head_only_step", () => TrainStep(headModel, head, input, target)),
            ("lora_step", () => TrainStep(loraModel, lora, input, target)),
            ("full_finetune_step", () => TrainStep(fullModel, full, input, target)),
            ("lora_unmerged_inference", () => Infer(loraModel, input)),
            ("lora_merged_inference", () => Infer(mergedModel, input)),
        };

        // Memory first, then time. Seeing each run's own peak needs glibc to hand freed blocks back from the start
        // (ProcessMemory.ReturnFreedMemory: blocks it already keeps would be reused unseen), and that pages in every
        // large allocation, which would slow the timed runs; so the timed pass runs with glibc's usual reuse.
        ProcessMemory.ReturnFreedMemory();
        foreach (var (_, run) in configurations) run();   // warm-up: optimizer state, allocator, kernels
        var seconds = configurations.ToDictionary(c => c.Name, _ => new List<double>());
        var peaks = configurations.ToDictionary(c => c.Name, _ => new List<long>());
        int memoryRounds = Math.Min(rounds, 2);   // a peak varies far less than a time
        for (int round = 0; round < memoryRounds; round++)
        {
            foreach (var (name, run) in configurations)
            {
                GC.Collect();
                ProcessMemory.ResetPeak();
                long before = ProcessMemory.Resident();
                run();
                peaks[name].Add(Math.Max(0, ProcessMemory.Peak() - before));
                Console.Error.WriteLine($"memory round {round + 1}/{memoryRounds} {name,-24} +{(ProcessMemory.Peak() - before) / 1e6:0} MB");
            }
        }
        ProcessMemory.KeepFreedMemory();
        foreach (var (_, run) in configurations) run();   // warm-up with the usual allocator
        for (int round = 0; round < rounds; round++)
        {
            foreach (var (name, run) in configurations)
            {
                GC.Collect();
                var clock = Stopwatch.StartNew();
                run();
                seconds[name].Add(clock.Elapsed.TotalSeconds);
                Console.Error.WriteLine($"time round {round + 1}/{rounds} {name,-24} {clock.Elapsed.TotalSeconds:0.000} s");
            }
        }

        // Where each training step's time and memory go (TrainingProfile), printed before the JSON line.
        if (profile)
        {
            foreach (var (name, model, optimizer) in new[] { ("head_only_step", headModel, head), ("lora_step", loraModel, lora), ("full_finetune_step", fullModel, full) })
            {
                var p = TrainingProfile.Measure(model, () => functional.mse_loss(model.call(input), target), steps: quick ? 1 : 2, title: name,
                                                optimizerStep: _ => optimizer.step());
                model.eval();
                Console.WriteLine(p.ToText(top: 12));
            }
        }

        double T(string name) => Median(seconds[name]);
        // The spread: one noisy round shows as a wide min-max, and the per-round ratio shows whether it held round by round.
        object Spread(string name) => new Dictionary<string, double>
        {
            ["min"] = Math.Round(seconds[name].Min(), 4), ["median"] = Math.Round(T(name), 4), ["max"] = Math.Round(seconds[name].Max(), 4),
        };
        double[] PerRound(string numerator, string denominator) =>
            seconds[numerator].Zip(seconds[denominator], (a, b) => Math.Round(a / b, 3)).ToArray();
        double M(string name) => Median(peaks[name].Select(p => (double)p).ToList());
        // What a training step needs beyond the frozen weights: its own peak (activations, temporaries) plus what lives
        // between steps for the trained parameters, which the peak above the start cannot see: their gradients and
        // AdamW's two moment buffers.
        var between = new Dictionary<string, long>
        {
            ["head_only_step"] = GradientAndOptimizerBytes(headModel), ["lora_step"] = GradientAndOptimizerBytes(loraModel),
            ["full_finetune_step"] = GradientAndOptimizerBytes(fullModel),
        };
        double Training(string name) => M(name) + between[name];
        var result = new Dictionary<string, object>
        {
            ["bench"] = "lora",
            ["shape"] = new[] { batch, length, options.DModel },
            ["model"] = $"pre-LN transformer d={options.DModel} layers={options.Layers} heads={options.Heads} ffn={options.Ffn}",
            ["lora"] = $"r=8 alpha=16 dropout={dropout} on q,k,v,o,fc1,fc2",
            ["threads"] = threads,
            ["rounds"] = rounds,
            ["seconds"] = configurations.ToDictionary(c => c.Name, c => Math.Round(T(c.Name), 4)),
            ["seconds_spread"] = configurations.ToDictionary(c => c.Name, c => Spread(c.Name)),
            ["ratios_per_round"] = new Dictionary<string, double[]>
            {
                ["lora_step_vs_full_step"] = PerRound("lora_step", "full_finetune_step"),
                ["lora_unmerged_vs_base_inference"] = PerRound("lora_unmerged_inference", "base_inference"),
                ["lora_merged_vs_base_inference"] = PerRound("lora_merged_inference", "base_inference"),
            },
            ["peak_mb_over_start"] = configurations.ToDictionary(c => c.Name, c => Math.Round(M(c.Name) / 1e6, 1)),
            ["gradient_and_optimizer_mb"] = between.ToDictionary(p => p.Key, p => Math.Round(p.Value / 1e6, 1)),
            ["training_memory_mb"] = between.Keys.ToDictionary(k => k, k => Math.Round(Training(k) / 1e6, 1)),
            ["trainable_parameters"] = new Dictionary<string, long>
            {
                ["head_only"] = Trainable(headModel), ["lora"] = Trainable(loraModel), ["full"] = Trainable(fullModel),
            },
            ["ratios"] = new Dictionary<string, double>
            {
                ["lora_step_vs_full_step"] = Math.Round(T("lora_step") / T("full_finetune_step"), 3),
                ["head_step_vs_full_step"] = Math.Round(T("head_only_step") / T("full_finetune_step"), 3),
                ["lora_unmerged_vs_base_inference"] = Math.Round(T("lora_unmerged_inference") / T("base_inference"), 3),
                ["lora_merged_vs_base_inference"] = Math.Round(T("lora_merged_inference") / T("base_inference"), 3),
                ["lora_step_peak_vs_full_step_peak"] = Math.Round(M("lora_step") / M("full_finetune_step"), 3),
                ["lora_training_memory_vs_full"] = Math.Round(Training("lora_step") / Training("full_finetune_step"), 3),
            },
            ["targets"] = new Dictionary<string, double>
            {
                ["lora_step_vs_full_step"] = 0.80, ["lora_unmerged_vs_base_inference"] = 1.10,
                ["lora_merged_vs_base_inference"] = 1.03, ["lora_training_memory_vs_full"] = 0.85,
            },
        };
        Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }

    static optim.Optimizer Optimizer(Module model) =>
        optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-4);

    // B = 0 at init would let a clever kernel skip work; give the adapters realistic, non-zero values.
    static void PerturbB(PeftModel peft)
    {
        using var _ = no_grad();
        foreach (var layer in peft.Layers)
            foreach (var (name, p) in layer["default"].named_parameters())
                if (name.StartsWith("lora_B", StringComparison.Ordinal)) p.normal_(0, 0.01);
    }

    static void TrainStep(Module<Tensor, Tensor> model, optim.Optimizer optimizer, Tensor input, Tensor target)
    {
        using var scope = NewDisposeScope();
        model.train();
        optimizer.zero_grad();
        functional.mse_loss(model.call(input), target).backward();
        optimizer.step();
        model.eval();
    }

    static void Infer(Module<Tensor, Tensor> model, Tensor input)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        model.call(input);
    }

    static long Trainable(Module model) => model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());

    // A gradient per trained parameter and AdamW's exp_avg and exp_avg_sq: three copies of the trained parameters.
    static long GradientAndOptimizerBytes(Module model) =>
        model.parameters().Where(p => p.requires_grad).Sum(p => 3 * p.numel() * p.ElementSize);

    internal static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }
}

using System.Diagnostics;
using System.Text.Json;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>bench adapters</c>: inference throughput of one batch whose rows use 1, 2, 4, ..., 64 distinct LoRA adapters (r 8
/// on q, k, v, o, fc1, fc2 of a pre-LN transformer, d_model 256, 2 layers, FFN 1024; 64 rows of 8 tokens), three ways:
/// the batched path (base once, gathered low-rank products, <see cref="PerRowPath.Batched"/>), the grouped loop (one pass
/// per adapter over its rows, <see cref="PerRowPath.Grouped"/>), and merge-switch-unmerge (for each adapter: merge it,
/// run its rows, unmerge). The reference is the same batch on one adapter (the ordinary forward). The runs are
/// interleaved round after round, so drift of the machine touches all alike; each time is the fastest of the rounds
/// (on a shared, loaded machine the fastest run is the one least slowed by others; the median moves with the load).
/// Prints one JSON line with rows per second and the ratios.
/// </summary>
static class BenchAdapters
{
    public static int Run(Arguments arguments)
    {
        bool quick = arguments.Flag("quick");
        int rounds = arguments.Int("repeats", quick ? 1 : 2);
        int threads = arguments.Int("threads", 2);
        int batch = arguments.Int("batch", quick ? 16 : 64);
        int maxAdapters = arguments.Int("adapters", quick ? 16 : 64);
        set_num_threads(threads);
        var options = new TransformerOptions(DModel: 256, Heads: 4, Ffn: 1024, Layers: 2, Outputs: 16);
        const int length = 8;

        manual_seed(1);
        var model = new TinyTransformer(options);
        model.eval();
        var config = new LoraConfig { TargetModules = ["q", "k", "v", "o", "fc1", "fc2"], R = 8, LoraAlpha = 16 };
        var names = Enumerable.Range(0, maxAdapters).Select(i => $"task{i}").ToList();
        var peft = PeftModel.Create(model, config, names[0]);
        foreach (var name in names.Skip(1)) peft.AddAdapter(name, config);
        using (no_grad())
            foreach (var layer in peft.Layers)
                foreach (var name in names)
                    ((LoraLinearAdapter)layer[name]).B.normal_(0, 0.01);   // B = 0 at init would make every adapter the base
        manual_seed(0);
        var input = randn(batch, length, options.DModel);

        var counts = new List<int>();
        for (int k = 1; k <= Math.Min(maxAdapters, batch); k *= 2) counts.Add(k);
        string[] RowNames(int k) => Enumerable.Range(0, batch).Select(i => names[i % k]).ToArray();

        Tensor Batched(int k) { using (peft.UseAdapterPerRow(RowNames(k), PerRowPath.Batched)) return model.call(input); }
        Tensor Grouped(int k) { using (peft.UseAdapterPerRow(RowNames(k), PerRowPath.Grouped)) return model.call(input); }
        Tensor OneAdapter() { peft.SetActiveAdapters(names[0]); return model.call(input); }
        Tensor MergeSwitch(int k)
        {
            var rows = RowNames(k);
            var output = zeros(batch, length, options.Outputs);
            foreach (var name in rows.Distinct())
            {
                var index = tensor(Enumerable.Range(0, batch).Where(i => rows[i] == name).Select(i => (long)i).ToArray());
                peft.SetActiveAdapters(name);
                peft.Merge();
                output.index_copy_(0, index, model.call(input.index_select(0, index)));
                peft.Unmerge();
            }
            return output;
        }

        var runs = new List<(string Name, int K, Func<Tensor> Run)> { ("one_adapter", 1, OneAdapter) };
        foreach (int k in counts)
        {
            runs.Add(("batched", k, () => Batched(k)));
            runs.Add(("grouped", k, () => Grouped(k)));
            runs.Add(("merge_switch", k, () => MergeSwitch(k)));
        }

        // The three ways agree (a benchmark of wrong answers would mean nothing): largest difference from the grouped loop.
        // This pass also warms every configuration up.
        double largestDifference = 0;
        using (no_grad())
            foreach (int k in counts)
            {
                using var scope = NewDisposeScope();
                if (k == 1) OneAdapter();
                var reference = Grouped(k);
                largestDifference = Math.Max(largestDifference, (Batched(k) - reference).abs().max().item<float>());
                largestDifference = Math.Max(largestDifference, (MergeSwitch(k) - reference).abs().max().item<float>());
            }

        var seconds = runs.ToDictionary(r => (r.Name, r.K), _ => new List<double>());
        for (int round = 0; round < rounds; round++)
            foreach (var (name, k, run) in runs)
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                GC.Collect();
                var clock = Stopwatch.StartNew();
                run();
                seconds[(name, k)].Add(clock.Elapsed.TotalSeconds);
                Console.Error.WriteLine($"round {round + 1}/{rounds} {name,-13} {k,3} adapters {clock.Elapsed.TotalSeconds:0.000} s");
            }

        double RowsPerSecond(string name, int k) => batch / seconds[(name, k)].Min();
        double one = RowsPerSecond("one_adapter", 1);
        Dictionary<string, double> PerCount(Func<int, double> value) => counts.ToDictionary(k => k.ToString(), k => Math.Round(value(k), 3));
        var result = new Dictionary<string, object>
        {
            ["bench"] = "adapters",
            ["shape"] = new[] { batch, length, options.DModel },
            ["model"] = $"pre-LN transformer d={options.DModel} layers={options.Layers} heads={options.Heads} ffn={options.Ffn}",
            ["lora"] = "r=8 alpha=16 on q,k,v,o,fc1,fc2",
            ["threads"] = threads,
            ["rounds"] = rounds,
            ["time"] = "fastest of the rounds",
            ["largest_difference_vs_grouped"] = largestDifference,
            ["rows_per_second"] = new Dictionary<string, object>
            {
                ["one_adapter"] = Math.Round(one, 1),
                ["batched"] = PerCount(k => RowsPerSecond("batched", k)),
                ["grouped"] = PerCount(k => RowsPerSecond("grouped", k)),
                ["merge_switch"] = PerCount(k => RowsPerSecond("merge_switch", k)),
            },
            ["ratios"] = new Dictionary<string, object>
            {
                ["batched_vs_one_adapter"] = PerCount(k => RowsPerSecond("batched", k) / one),
                ["batched_vs_grouped"] = PerCount(k => RowsPerSecond("batched", k) / RowsPerSecond("grouped", k)),
                ["batched_vs_merge_switch"] = PerCount(k => RowsPerSecond("batched", k) / RowsPerSecond("merge_switch", k)),
            },
            ["targets_at_32_adapters"] = new Dictionary<string, double> { ["batched_vs_one_adapter"] = 0.8, ["batched_vs_merge_switch"] = 4 },
        };
        Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }
}

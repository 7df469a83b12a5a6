using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using PeftSharp.Models.Bert;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>bench bert</c>: forward throughput (sentences per second) of a packaged BERT encoder on the CPU, the TorchSharp
/// implementation against ONNX Runtime running the package's own ONNX file, on the same tokenized batch, with the same
/// thread count. Rounds alternate which runtime goes first, in one process; medians are reported, with the largest
/// difference between the two outputs as a check that both computed the same thing. Prints one JSON line.
/// <para>libtorch's OpenMP threads spin after each operation unless <c>OMP_WAIT_POLICY=PASSIVE</c> is set before the
/// process starts; on a small or shared machine the spinning slows TorchSharp (and everything else in the process)
/// severalfold, so the line reports the policy in effect.</para>
/// </summary>
static class BenchBert
{
    // Everyday sentences of 5 to 30 words (about 8 to 40 tokens), repeated to fill the batch.
    static readonly string[] Sentences =
    [
        "The food was great and the service was even better.",
        "I would not recommend this phone to anyone.",
        "Battery life is short.",
        "After three weeks of daily use the keyboard still feels solid, the keys are quiet, and the backlight is even across the board.",
        "Terrible plot, wooden acting, and a soundtrack that never stops.",
        "What a pleasant surprise!",
        "The hotel room was clean, but the walls were so thin that we heard every conversation next door until midnight.",
        "Shipping took longer than promised.",
        "It does exactly what it says on the box, nothing more and nothing less.",
        "My children loved the film and asked to watch it again the very next day.",
        "Customer support never answered my emails.",
        "A fine little restaurant with friendly staff, fair prices and the best soup in town.",
        "The screen cracked after a week.",
        "Even on the lowest setting the fan is loud enough to be distracting during calls, which makes it hard to use in an office.",
        "Highly recommended.",
        "The second half of the book drags, yet the ending makes up for it.",
    ];

    public static int Run(Arguments arguments)
    {
        bool quick = arguments.Flag("quick");
        var pretrained = PretrainedBert.FromName(arguments.Text("model") ?? PretrainedBert.MiniLM.Name);
        int batchSize = arguments.Int("batch", quick ? 8 : 32);
        int rounds = arguments.Int("repeats", quick ? 3 : 15);
        int threads = arguments.Int("threads", 2);
        set_num_threads(threads);

        var model = pretrained.LoadModel();
        var tokenizer = pretrained.LoadTokenizer();
        var texts = Enumerable.Range(0, batchSize).Select(i => Sentences[i % Sentences.Length]).ToList();
        using var batch = tokenizer.Encode(texts);

        using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, ExecutionMode = ExecutionMode.ORT_SEQUENTIAL };
        using var session = new InferenceSession(pretrained.ReadOnnx(), options);
        var dims = batch.InputIds.shape.Select(d => (int)d).ToArray();
        NamedOnnxValue Input(string name, Tensor t) => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(t.data<long>().ToArray(), dims));
        var inputs = new[] { Input("input_ids", batch.InputIds), Input("attention_mask", batch.AttentionMask), Input("token_type_ids", batch.TokenTypeIds) };
        string[] outputs = ["last_hidden_state"];

        float[] RunTorch()
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            return model.Forward(batch).data<float>().ToArray();
        }
        float[] RunOnnx()
        {
            using var results = session.Run(inputs, outputs);
            return results[0].AsTensor<float>().ToArray();
        }

        // Warm-up (allocators, kernels, graph optimisation), and the check that both give the same output.
        var torchOut = RunTorch();
        var onnxOut = RunOnnx();
        double maxDifference = torchOut.Zip(onnxOut, (a, b) => (double)Math.Abs(a - b)).Max();
        RunTorch();
        RunOnnx();

        var seconds = new Dictionary<string, List<double>> { ["torchsharp"] = [], ["onnxruntime"] = [] };
        for (int round = 0; round < rounds; round++)
        {
            var order = round % 2 == 0 ? new[] { "torchsharp", "onnxruntime" } : ["onnxruntime", "torchsharp"];
            foreach (var name in order)
            {
                var clock = Stopwatch.StartNew();
                if (name == "torchsharp") RunTorch(); else RunOnnx();
                seconds[name].Add(clock.Elapsed.TotalSeconds);
                Console.Error.WriteLine($"round {round + 1}/{rounds} {name,-12} {clock.Elapsed.TotalSeconds:0.000} s");
            }
        }

        double torchSeconds = BenchLora.Median(seconds["torchsharp"]), onnxSeconds = BenchLora.Median(seconds["onnxruntime"]);
        var result = new Dictionary<string, object>
        {
            ["bench"] = "bert",
            ["model"] = pretrained.ModelId,
            ["batch"] = batchSize,
            ["padded_length"] = dims[1],
            ["threads"] = threads,
            ["omp_wait_policy"] = Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "default (active)",
            ["rounds"] = rounds,
            ["median_seconds"] = new Dictionary<string, double> { ["torchsharp"] = Math.Round(torchSeconds, 4), ["onnxruntime"] = Math.Round(onnxSeconds, 4) },
            ["sentences_per_second"] = new Dictionary<string, double>
            {
                ["torchsharp"] = Math.Round(batchSize / torchSeconds, 1), ["onnxruntime"] = Math.Round(batchSize / onnxSeconds, 1),
            },
            ["torchsharp_vs_onnxruntime_throughput"] = Math.Round(onnxSeconds / torchSeconds, 3),
            ["max_abs_difference"] = maxDifference,
        };
        Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }
}

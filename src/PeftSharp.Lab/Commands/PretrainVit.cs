using System.Diagnostics;
using System.Text.Json;
using PeftSharp.Data;
using PeftSharp.Models.Vit;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>pretrain vit</c>: pretrains a <see cref="VitForImageClassification"/> on the MNIST subset (seeded, with random
/// shifts of up to 2 pixels), writes the checkpoint to <c>data/models/tiny-vit-mnist</c>, measures the saved model on
/// the MNIST test split, and measures the head-only baseline on Fashion-MNIST (frozen ViT, a new classifier trained
/// briefly) that the vision-adapter notebooks compare against.
/// </summary>
static class PretrainVit
{
    public const ulong Seed = 42;

    /// <summary>MNIST test images in the slice that the tests re-measure.</summary>
    public const int SliceImages = 100;
    const int Shift = 2;

    public static int Run(Arguments arguments)
    {
        var total = Stopwatch.StartNew();
        bool quick = arguments.Flag("quick");
        string output = arguments.Text("out") ?? (quick ? Path.Combine(Repository.Root(), "artifacts", "pretrain-vit-quick") : Path.Combine(Repository.Root(), "data", "models", PretrainedVit.TinyMnist));
        int batchSize = arguments.Int("batch", 64);
        // One thread: on this shared 2-core machine two threads were 2.5x slower per step (they wait on each other).
        int threads = arguments.Int("threads", 1);
        set_num_threads(threads);
        manual_seed((long)Seed);

        var train = ImageSet.FromDataFrame(Datasets.Mnist(Split.Train));
        var validation = ImageSet.FromDataFrame(Datasets.Mnist(Split.Validation));
        var test = ImageSet.FromDataFrame(Datasets.Mnist(Split.Test));
        var config = new VitConfig
        {
            HiddenSize = arguments.Int("hidden", quick ? 32 : 64),
            Layers = arguments.Int("layers", quick ? 1 : 4),
            Heads = arguments.Int("heads", 4),
            IntermediateSize = arguments.Int("ffn", quick ? 64 : 128),
        };
        var model = new VitForImageClassification(config);
        long parameters = model.parameters().Sum(p => p.numel());
        var hyper = new TrainerOptions
        {
            Epochs = arguments.Int("epochs", quick ? 1 : 30),
            MaxSteps = arguments.Text("steps") is null ? (quick ? 10 : null) : arguments.Int("steps", 1),
            LearningRate = 2e-3,
            WeightDecay = 0.05,
            Schedule = LearningRateSchedule.Cosine,
            WarmupFraction = 0.05,
            MaxGradientNorm = 1.0,
            EvaluateEvery = train.Count / batchSize * (quick ? 1 : 5),
        };
        Console.WriteLine($"pretrain vit: a ViT on MNIST digits (data/mnist: {train.Count} train, {validation.Count} validation, {test.Count} test)");
        Console.WriteLine($"  model: {config.Layers} layers, hidden {config.HiddenSize}, {config.Heads} heads, MLP {config.IntermediateSize}, {config.PatchSize}x{config.PatchSize} patches " +
                          $"({config.Patches} + [CLS]): {parameters:N0} parameters");
        Console.WriteLine($"  training: {hyper.Epochs} epochs of {train.Count / batchSize} batches of {batchSize}, random shifts up to {Shift} px, AdamW lr {hyper.LearningRate:G3} cosine, {threads} threads");

        var shifts = new SeededRandom(Seed);
        var trainer = new Trainer();
        trainer.Progress += new ConsoleProgress("  pretraining").Report;
        trainer.Progress += p => { if (p.LatestEvaluation is { } e && e.Step == p.Step) Console.WriteLine($"    step {p.Step} (epoch {p.Epoch + 1}): validation accuracy {e.Metrics["accuracy"]:P1}, loss {e.Metrics["loss"]:0.000}, {p.Elapsed:hh\\:mm\\:ss}"); };
        var log = trainer.Fit(model, epoch => train.Batches(batchSize, seed: Seed + (ulong)epoch, dropLast: true),
            batch =>
            {
                var t = batch.ToTensors();
                return Losses.Classification(model.call(RandomShift(t.Images, shifts)), t.Labels);
            },
            hyper,
            evaluate: () =>
            {
                var (accuracy, _, loss) = ImageClassificationEvaluation.Evaluate(model, validation);
                return new Dictionary<string, double> { ["accuracy"] = accuracy, ["loss"] = loss };
            },
            name: "pretrain tiny ViT on MNIST");

        PretrainedVit.Save(model, output);
        var loaded = PretrainedVit.Load(output);
        var (testAccuracy, testF1, testLoss) = ImageClassificationEvaluation.Evaluate(loaded, test);
        var (validAccuracy, _, validLoss) = ImageClassificationEvaluation.Evaluate(loaded, validation);
        // A small slice the tests re-measure (PeftSharp.Tests: the checkpoint reproduces it).
        var slice = ImageSet.FromDataFrame(Datasets.Mnist(Split.Test).Head(SliceImages));
        var (sliceAccuracy, _, sliceLoss) = ImageClassificationEvaluation.Evaluate(loaded, slice);
        Console.WriteLine($"  saved checkpoint: MNIST test accuracy {testAccuracy:P1} (macro F1 {testF1:0.000}, loss {testLoss:0.000}); validation accuracy {validAccuracy:P1}");

        // Baseline for the vision-adapter notebooks: the frozen MNIST ViT with a new head trained on Fashion-MNIST.
        var fashionTrain = ImageSet.FromDataFrame(Datasets.FashionMnist(Split.Train));
        var fashionTest = ImageSet.FromDataFrame(Datasets.FashionMnist(Split.Test));
        var headOnly = PretrainedVit.Load(output);
        manual_seed((long)Seed);
        foreach (var p in headOnly.parameters()) p.requires_grad = false;
        headOnly.ReplaceClassifier(Datasets.FashionMnistLabels.Count);
        var headOptions = new TrainerOptions { Epochs = quick ? 1 : 5, LearningRate = 1e-2, Schedule = LearningRateSchedule.Cosine };
        var headLog = new Trainer().Fit(headOnly, epoch => fashionTrain.Batches(batchSize, seed: Seed + (ulong)epoch),
            batch =>
            {
                var t = batch.ToTensors();
                return Losses.Classification(headOnly.call(t.Images), t.Labels);
            },
            headOptions, name: "head only on Fashion-MNIST");
        var (fashionAccuracy, fashionF1, fashionLoss) = ImageClassificationEvaluation.Evaluate(headOnly, fashionTest);
        Console.WriteLine($"  head-only baseline on Fashion-MNIST: test accuracy {fashionAccuracy:P1} (macro F1 {fashionF1:0.000}) after {headLog.Steps.Count} steps " +
                          $"({headLog.TrainableParameters:N0} trainable parameters, {headLog.Duration.TotalSeconds:0.0} s)");

        PretrainGpt.WriteLog(Path.Combine(output, "training-log.csv"), log);
        long weightBytes = new FileInfo(Path.Combine(output, PretrainedVit.WeightsFile)).Length;
        var metrics = new SortedDictionary<string, object>
        {
            ["mnist_test_accuracy"] = Math.Round(testAccuracy, 4), ["mnist_test_macro_f1"] = Math.Round(testF1, 4), ["mnist_test_loss"] = Math.Round(testLoss, 4),
            ["mnist_validation_accuracy"] = Math.Round(validAccuracy, 4), ["mnist_validation_loss"] = Math.Round(validLoss, 4),
            ["fashion_head_only_test_accuracy"] = Math.Round(fashionAccuracy, 4), ["fashion_head_only_test_macro_f1"] = Math.Round(fashionF1, 4),
            ["fashion_head_only_steps"] = headLog.Steps.Count, ["fashion_head_only_seconds"] = Math.Round(headLog.Duration.TotalSeconds, 1),
            ["fashion_head_only_trainable_parameters"] = headLog.TrainableParameters,
            ["steps"] = log.Steps.Count, ["training_seconds"] = Math.Round(log.Duration.TotalSeconds, 1), ["command_seconds"] = Math.Round(total.Elapsed.TotalSeconds, 1),
            ["parameters"] = parameters, ["weights_bytes"] = weightBytes, ["seed"] = Seed, ["threads"] = threads,
            ["mnist_test_slice_images"] = SliceImages, ["mnist_test_slice_accuracy"] = Math.Round(sliceAccuracy, 4), ["mnist_test_slice_loss"] = Math.Round(sliceLoss, 5),
        };
        IO.AtomicFile.WriteAllText(Path.Combine(output, "metrics.json"), JsonSerializer.Serialize(metrics, new JsonSerializerOptions { WriteIndented = true }));
        IO.AtomicFile.WriteAllText(Path.Combine(output, "README.md"), Readme(config, hyper, headOptions, log, metrics, batchSize, quick));
        Console.WriteLine($"  wrote {output}: weights {weightBytes / 1e3:0} KB; training {log.Duration:hh\\:mm\\:ss}, whole command {total.Elapsed:hh\\:mm\\:ss}");
        return 0;
    }

    /// <summary>Each image moved by a random whole number of pixels in -Shift..Shift along each axis (zero fill).</summary>
    static Tensor RandomShift(Tensor images, SeededRandom random)
    {
        long b = images.shape[0], side = images.shape[2];
        var padded = nn.functional.pad(images, [Shift, Shift, Shift, Shift]);
        var moved = new Tensor[b];
        for (int i = 0; i < b; i++)
        {
            int dy = random.NextInt(2 * Shift + 1), dx = random.NextInt(2 * Shift + 1);
            moved[i] = padded[i].narrow(1, dy, side).narrow(2, dx, side);
        }
        return stack(moved);
    }

    static string Readme(VitConfig config, TrainerOptions hyper, TrainerOptions headOptions, TrainingLog log, IDictionary<string, object> m, int batchSize, bool quick) => $$"""
        # tiny-vit-mnist: a small ViT pretrained on MNIST digits

        {{(quick ? "**A quick smoke run (`--quick`), not the real checkpoint.**\n\n" : "")}}Written by `dotnet run --project src/PeftSharp.Lab -- pretrain vit` (seed {{Seed}}); every number below was measured by that run
        and is also in `metrics.json`. Load it with `PretrainedVit.Load()` (`PeftSharp.Models.Vit`).

        | | |
        |---|---|
        | MNIST test accuracy (saved float16 weights, 500 images) | **{{(double)m["mnist_test_accuracy"]:P1}}** (macro F1 {{m["mnist_test_macro_f1"]}}, loss {{m["mnist_test_loss"]}}) |
        | MNIST test, first {{m["mnist_test_slice_images"]}} images (re-measured by the tests) | accuracy {{(double)m["mnist_test_slice_accuracy"]:P1}}, loss {{m["mnist_test_slice_loss"]}} |
        | MNIST validation accuracy (500 images) | {{(double)m["mnist_validation_accuracy"]:P1}} |
        | Fashion-MNIST test accuracy, head only (baseline) | **{{(double)m["fashion_head_only_test_accuracy"]:P1}}** (macro F1 {{m["fashion_head_only_test_macro_f1"]}}): frozen ViT, a new `classifier` ({{m["fashion_head_only_trainable_parameters"]:N0}} parameters) trained {{headOptions.Epochs}} epochs on the 2,000 training images ({{m["fashion_head_only_steps"]}} steps, AdamW lr {{headOptions.LearningRate:G3}} cosine, {{m["fashion_head_only_seconds"]}} s) |
        | time | training {{log.Duration:hh\:mm\:ss}} ({{log.Steps.Count}} steps), whole command {{TimeSpan.FromSeconds((double)m["command_seconds"]):hh\:mm\:ss}}, on {{m["threads"]}} thread{{((int)m["threads"] == 1 ? "" : "s")}} of a shared 2-core machine |
        | parameters | {{m["parameters"]:N0}} |
        | `model.safetensors` | {{(long)m["weights_bytes"] / 1e3:0}} KB (float16) |

        ## Files
        - `config.json`: the model's sizes, with Hugging Face `ViTConfig` field names.
        - `model.safetensors`: the state dict in float16 with Hugging Face `ViTForImageClassification` keys (`vit.embeddings.cls_token`,
          `vit.embeddings.position_embeddings`, `vit.embeddings.patch_embeddings.projection.weight`, `vit.encoder.layer.N.attention.attention.query.weight`, ...,
          `vit.layernorm.weight`, `classifier.weight`). The patch projection is a Linear over flattened (channel, row, column) patches: Hugging Face's
          Conv2d weight is this weight reshaped to (hidden, channels, patch, patch).
        - `training-log.csv`: step, epoch, loss, learning rate, gradient norm, seconds, and the validation accuracy/loss where measured.
        - `metrics.json`: the numbers of this page.

        ## Model
        {{config.ImageSize}} x {{config.ImageSize}} grey images cut into {{config.Patches}} patches of {{config.PatchSize}} x {{config.PatchSize}}, a [CLS] token and learned positions;
        {{config.Layers}} pre-LayerNorm encoder layers (hidden {{config.HiddenSize}}, {{config.Heads}} heads, GELU MLP {{config.IntermediateSize}}); `classifier` on the final [CLS] state.

        ## Training
        The 4,000 training digits of `data/mnist`, {{hyper.Epochs}} epochs of batches of {{batchSize}} shuffled per epoch (seed {{Seed}} + epoch), each image shifted by a
        random 0-{{Shift}} pixels along each axis (seeded), AdamW (learning rate {{hyper.LearningRate:G3}}, weight decay {{hyper.WeightDecay}}, {{hyper.WarmupFraction:P0}} warm-up then cosine),
        gradient norm clipped at {{hyper.MaxGradientNorm}}, float32 on the CPU; validation accuracy every {{hyper.EvaluateEvery}} steps in the log.
        """;
}

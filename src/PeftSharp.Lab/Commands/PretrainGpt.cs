using System.Diagnostics;
using System.Globalization;
using System.Text;
using PeftSharp.Data;
using PeftSharp.Models.Gpt;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>pretrain gpt</c>: builds the compact GPT-2 vocabulary of the Brown training text, pretrains a
/// <see cref="GptForCausalLM"/> on it (seeded), and writes the checkpoint folder (config, float16 weights, tokenizer,
/// the loss log, samples, metrics and a README with the measured numbers) to <c>data/models/tiny-gpt-brown</c>.
/// </summary>
static class PretrainGpt
{
    public const ulong Seed = 42;

    /// <summary>Validation blocks in the slice that the tests re-measure.</summary>
    public const int SliceBlocks = 16;

    public static int Run(Arguments arguments)
    {
        var total = Stopwatch.StartNew();
        bool quick = arguments.Flag("quick");
        string output = arguments.Text("out") ?? (quick ? Path.Combine(Repository.Root(), "artifacts", "pretrain-gpt-quick") : Path.Combine(Repository.Root(), "data", "models", PretrainedGpt.TinyBrown));
        int blockSize = arguments.Int("block", quick ? 32 : 128);
        int batchSize = arguments.Int("batch", 16);
        int epochs = arguments.Int("epochs", quick ? 1 : 8);
        int minCount = arguments.Int("min-count", 5);
        var hyper = new TrainerOptions
        {
            Epochs = epochs,
            MaxSteps = arguments.Text("steps") is null ? (quick ? 20 : null) : arguments.Int("steps", 1),
            LearningRate = arguments.Number("lr", 3e-3),
            WeightDecay = 0.01,
            Schedule = LearningRateSchedule.Cosine,
            WarmupFraction = 0.05,
            MaxGradientNorm = 1.0,
            EvaluateEvery = quick ? 10 : 100,
        };
        // One thread: on this shared 2-core machine two threads were 2.5x slower per step (they wait on each other).
        int threads = arguments.Int("threads", 1);
        set_num_threads(threads);
        manual_seed((long)Seed);

        Console.WriteLine("pretrain gpt: a Llama-style decoder on the Brown corpus (data/brown, BrownText train split)");
        var trainFrame = Datasets.BrownText(Split.Train);
        var validationFrame = Datasets.BrownText(Split.Validation);
        var trainTexts = trainFrame.Columns["Text"].Cast<string>().ToList();
        var tokenizer = GptTokenizer.Build(trainTexts, minCount);
        var train = LanguageModelSet.Create(trainFrame, tokenizer, blockSize);
        var validation = LanguageModelSet.Create(validationFrame, tokenizer, blockSize);
        double unknownShare = validationFrame.Columns["Text"].Cast<string>().SelectMany(tokenizer.Encode).Average(id => id == GptTokenizer.UnknownId ? 1.0 : 0.0);
        Console.WriteLine($"  tokenizer: GPT-2 BPE, {tokenizer.VocabSize:N0} ids (GPT-2 tokens seen >= {minCount} times in train + end-of-text + unknown); " +
                          $"train {train.TokenCount:N0} tokens, validation {validation.TokenCount:N0} ({unknownShare:P2} unknown)");

        var config = new GptConfig
        {
            VocabSize = tokenizer.VocabSize,
            HiddenSize = arguments.Int("hidden", quick ? 64 : 192),
            IntermediateSize = arguments.Int("ffn", quick ? 128 : 512),
            Layers = arguments.Int("layers", quick ? 2 : 4),
            Heads = arguments.Int("heads", quick ? 2 : 4),
            MaxPositions = Math.Max(blockSize, 256),
        };
        var model = new GptForCausalLM(config);
        Console.WriteLine($"  model: {config.Layers} layers, hidden {config.HiddenSize}, {config.Heads} heads, SwiGLU {config.IntermediateSize}, " +
                          $"rotary positions, tied embeddings: {model.ParameterCount:N0} parameters");
        int validationRows = Math.Min(validation.Count, quick ? 8 : 48);
        Console.WriteLine($"  training: {epochs} epoch(s) of {train.Count / batchSize} batches of {batchSize} x {blockSize} tokens, AdamW lr {hyper.LearningRate:G3} cosine, " +
                          $"{threads} threads, validation on {validationRows} blocks every {hyper.EvaluateEvery} steps");

        var trainer = new Trainer();
        var progress = new ConsoleProgress("  pretraining");
        trainer.Progress += progress.Report;
        trainer.Progress += p => { if (p.LatestEvaluation is { } e && e.Step == p.Step) Console.WriteLine($"    step {p.Step}: validation loss {e.Metrics["loss"]:0.000} (perplexity {e.Metrics["perplexity"]:0.0}), {p.Elapsed:hh\\:mm\\:ss}"); };
        var log = trainer.Fit(model, epoch => train.Batches(batchSize, seed: Seed + (ulong)epoch, dropLast: true),
            batch =>
            {
                var t = batch.ToTensors();
                return Losses.CausalLanguageModel(model.call(t.InputIds), t.Labels);
            },
            hyper,
            evaluate: () =>
            {
                var (loss, perplexity, _) = LanguageModelEvaluation.Evaluate(model, validation, batchSize, validationRows);
                return new Dictionary<string, double> { ["loss"] = loss, ["perplexity"] = perplexity };
            },
            name: "pretrain tiny GPT on Brown");

        // Save (float16), load back, and measure what the saved checkpoint does.
        var pretrained = new PretrainedGpt(model, tokenizer);
        pretrained.Save(output);
        var loaded = PretrainedGpt.Load(output);
        var (trainLoss, trainPerplexity, trainTokens) = LanguageModelEvaluation.Evaluate(loaded.Model, train, batchSize, validation.Count);
        var (validLoss, validPerplexity, validTokens) = LanguageModelEvaluation.Evaluate(loaded.Model, validation, batchSize);
        // A small slice the tests re-measure (PeftSharp.Tests: the checkpoint reproduces it).
        var (sliceLoss, _, sliceTokens) = LanguageModelEvaluation.Evaluate(loaded.Model, validation, batchSize, SliceBlocks);
        Console.WriteLine($"  saved checkpoint: train loss {trainLoss:0.000} (perplexity {trainPerplexity:0.0}, first {trainTokens:N0} tokens), " +
                          $"validation loss {validLoss:0.000} (perplexity {validPerplexity:0.0}, {validTokens:N0} tokens)");

        string[] prompts = ["The", "In the morning", "The government of the United States", "She looked at him and said"];
        var samples = new StringBuilder();
        foreach (var prompt in prompts)
        {
            string greedy = loaded.Complete(prompt, GenerationOptions.Greedy(30));
            string sampled = loaded.Complete(prompt, GenerationOptions.Sampled(0.8, 40, Seed, 30));
            samples.AppendLine($"- prompt `{prompt}`").AppendLine($"  - greedy: **{prompt}**{greedy.ReplaceLineEndings(" ")}")
                   .AppendLine($"  - sampled (temperature 0.8, top-k 40, seed {Seed}): **{prompt}**{sampled.ReplaceLineEndings(" ")}");
        }
        Console.Write(samples.ToString().Replace("**", ""));

        // The loss log and the numbers, next to the weights.
        WriteLog(Path.Combine(output, "training-log.csv"), log);
        long weightBytes = new FileInfo(Path.Combine(output, PretrainedGpt.WeightsFile)).Length;
        var metrics = new SortedDictionary<string, object>
        {
            ["validation_loss"] = Math.Round(validLoss, 4), ["validation_perplexity"] = Math.Round(validPerplexity, 2), ["validation_tokens"] = validTokens,
            ["validation_blocks"] = validation.Count, ["block_size"] = blockSize, ["train_loss"] = Math.Round(trainLoss, 4), ["train_perplexity"] = Math.Round(trainPerplexity, 2),
            ["train_tokens_scored"] = trainTokens, ["steps"] = log.Steps.Count, ["training_seconds"] = Math.Round(log.Duration.TotalSeconds, 1),
            ["command_seconds"] = Math.Round(total.Elapsed.TotalSeconds, 1), ["parameters"] = model.ParameterCount, ["weights_bytes"] = weightBytes,
            ["seed"] = Seed, ["threads"] = threads, ["validation_unknown_share"] = Math.Round(unknownShare, 5),
            ["validation_slice_blocks"] = SliceBlocks, ["validation_slice_tokens"] = sliceTokens, ["validation_slice_loss"] = Math.Round(sliceLoss, 5),
        };
        IO.AtomicFile.WriteAllText(Path.Combine(output, "metrics.json"), System.Text.Json.JsonSerializer.Serialize(metrics, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        IO.AtomicFile.WriteAllText(Path.Combine(output, "README.md"), Readme(config, hyper, log, metrics, tokenizer, train, validation, batchSize, minCount, samples.ToString(), quick));
        Console.WriteLine($"  wrote {output}: weights {weightBytes / 1e6:0.00} MB; training {log.Duration:hh\\:mm\\:ss}, whole command {total.Elapsed:hh\\:mm\\:ss}");
        return 0;
    }

    internal static void WriteLog(string path, TrainingLog log)
    {
        var evaluations = log.Evaluations.ToDictionary(e => e.Step);
        var keys = log.Evaluations.SelectMany(e => e.Metrics.Keys).Distinct().ToList();
        var text = new StringBuilder("step,epoch,loss,learning_rate,gradient_norm,elapsed_seconds" + string.Concat(keys.Select(k => ",validation_" + k)) + "\n");
        foreach (var s in log.Steps)
        {
            text.Append(CultureInfo.InvariantCulture, $"{s.Step},{s.Epoch},{s.Loss:0.#####},{s.LearningRate:G4},{s.GradientNorm:0.####},{s.Elapsed.TotalSeconds:0.##}");
            foreach (var k in keys)
                text.Append(',').Append(evaluations.TryGetValue(s.Step, out var e) && e.Metrics.TryGetValue(k, out var v) ? v.ToString("0.#####", CultureInfo.InvariantCulture) : "");
            text.Append('\n');
        }
        IO.AtomicFile.WriteAllText(path, text.ToString());
    }

    static string Readme(GptConfig config, TrainerOptions hyper, TrainingLog log, IDictionary<string, object> m, GptTokenizer tokenizer, LanguageModelSet train,
                         LanguageModelSet validation, int batchSize, int minCount, string samples, bool quick) => $$"""
        # tiny-gpt-brown: a small Llama-style GPT pretrained on the Brown corpus

        {{(quick ? "**A quick smoke run (`--quick`), not the real checkpoint.**\n\n" : "")}}Written by `dotnet run --project src/PeftSharp.Lab -- pretrain gpt` (seed {{Seed}}); every number below was measured by that run
        and is also in `metrics.json`. Load it with `PretrainedGpt.Load()` (`PeftSharp.Models.Gpt`).

        | | |
        |---|---|
        | validation loss (saved float16 weights) | **{{m["validation_loss"]}}** nats/token, perplexity **{{m["validation_perplexity"]}}** ({{m["validation_tokens"]:N0}} tokens: all {{validation.Count}} blocks of {{validation.BlockSize}} of the BrownText validation split) |
        | validation loss, first {{m["validation_slice_blocks"]}} blocks (re-measured by the tests) | {{m["validation_slice_loss"]}} ({{m["validation_slice_tokens"]}} tokens) |
        | train loss (same, first {{validation.Count}} train blocks) | {{m["train_loss"]}}, perplexity {{m["train_perplexity"]}} |
        | last training loss (mean of last 20 steps) | {{log.RecentLoss(20):0.000}} |
        | time | training {{log.Duration:hh\:mm\:ss}} ({{log.Steps.Count}} steps), whole command {{TimeSpan.FromSeconds((double)m["command_seconds"]):hh\:mm\:ss}}, on {{m["threads"]}} thread{{((int)m["threads"] == 1 ? "" : "s")}} of a shared 2-core machine |
        | parameters | {{m["parameters"]:N0}} (embedding {{(long)config.VocabSize * config.HiddenSize:N0}}, tied with `lm_head`) |
        | `model.safetensors` | {{(long)m["weights_bytes"] / 1e6:0.00}} MB (float16) |

        ## Files
        - `config.json`: the model's sizes, with Hugging Face `LlamaConfig` field names.
        - `model.safetensors`: the state dict in float16, keys as Hugging Face's `LlamaForCausalLM` (`model.embed_tokens.weight`,
          `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`); `lm_head` is tied to `model.embed_tokens` and not stored.
        - `tokenizer.json`: the compact vocabulary: `gpt2_ids[i]` is the GPT-2 id behind id i (id 0 = `<|endoftext|>`, id 1 = unknown).
        - `training-log.csv`: step, epoch, loss, learning rate, gradient norm, seconds, and the validation loss/perplexity where measured.
        - `metrics.json`: the numbers of this page.

        ## Model
        Decoder-only transformer with Llama's module names: {{config.Layers}} blocks of pre-RMSNorm causal self-attention
        ({{config.Heads}} heads of {{config.HeadSize}}, rotary positions, theta {{config.RopeTheta}}) and a SwiGLU MLP ({{config.IntermediateSize}}), hidden size
        {{config.HiddenSize}}, context {{config.MaxPositions}} positions (trained on {{train.BlockSize}}), no biases, tied input/output embeddings.

        ## Data and tokenizer
        Brown corpus subset of `data/brown` (`Datasets.BrownText`: paragraphs, documents split train/validation/test by
        document). Text is tokenized with GPT-2's byte-level BPE (Microsoft.ML.Tokenizers) and each GPT-2 token seen at
        least {{minCount}} times in the training paragraphs keeps an id: {{tokenizer.VocabSize:N0}} ids in all. Paragraphs are joined
        with `<|endoftext|>` and cut into blocks of {{train.BlockSize}} + 1 tokens: {{train.TokenCount:N0}} train tokens ({{train.Count:N0}} blocks),
        {{validation.TokenCount:N0}} validation tokens; {{(double)m["validation_unknown_share"]:P2}} of validation tokens are unknown.

        ## Training
        {{log.Steps.Count}} steps, batches of {{batchSize}} blocks shuffled per epoch (seed {{Seed}} + epoch), AdamW (learning rate {{hyper.LearningRate:G3}},
        weight decay {{hyper.WeightDecay}}, {{hyper.WarmupFraction:P0}} linear warm-up then cosine to 0), gradient norm clipped at {{hyper.MaxGradientNorm}},
        float32 on the CPU. The loss is the mean next-token cross-entropy (`Losses.CausalLanguageModel`).

        ## Samples (from the saved checkpoint)
        {{samples}}
        """;
}

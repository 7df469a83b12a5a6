using System.Text.Json;
using PeftSharp.Adapters;
using PeftSharp.Data;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models.Gpt;
using PeftSharp.Models.Vit;
using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

/// <summary>The checkpoints in data/models load and give the numbers their README documents (metrics.json holds them,
/// written by the run that made the checkpoint).</summary>
public sealed class PretrainedCheckpointTests(PretrainedCheckpointTests.LoadedGpt loaded) : IClassFixture<PretrainedCheckpointTests.LoadedGpt>
{
    /// <summary>The GPT checkpoint, loaded once for the tests that only read it.</summary>
    public sealed class LoadedGpt
    {
        public PretrainedGpt Gpt { get; } = PretrainedGpt.Load();
    }

    static JsonElement Metrics(string model) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(DataDirectory.FindModel(model), "metrics.json"))).RootElement;

    [Fact]
    public void The_pretrained_GPT_reproduces_its_documented_validation_loss_on_a_slice()
    {
        var metrics = Metrics(PretrainedGpt.TinyBrown);
        var gpt = loaded.Gpt;
        var validation = LanguageModelSet.Create(Datasets.BrownText(Split.Validation), gpt.Tokenizer, metrics.GetProperty("block_size").GetInt32());
        int blocks = metrics.GetProperty("validation_slice_blocks").GetInt32();
        var (loss, perplexity, tokens) = LanguageModelEvaluation.Evaluate(gpt.Model, validation, batchSize: 16, maxRows: blocks);
        Assert.Equal(metrics.GetProperty("validation_slice_tokens").GetInt64(), tokens);
        Assert.Equal(metrics.GetProperty("validation_slice_loss").GetDouble(), loss, 3);
        Assert.True(perplexity < 1000, $"perplexity {perplexity:0.0}: far from a trained model");
    }

    [Fact]
    public void Block_losses_are_one_per_block_in_order_and_weighted_by_tokens_they_give_the_set_s_mean_loss()
    {
        var gpt = loaded.Gpt;
        var validation = LanguageModelSet.Create(Datasets.BrownText(Split.Validation, "government"), gpt.Tokenizer, blockSize: 64);
        var blocks = LanguageModelEvaluation.BlockLosses(gpt.Model, validation, batchSize: 7);
        Assert.Equal(validation.Count, blocks.Count);
        Assert.All(blocks, b => Assert.True(double.IsFinite(b) && b > 0));
        var tokens = Enumerable.Range(0, validation.Count).Select(r =>
        {
            using var t = new Batch<TokenTensors>(validation, [r]).ToTensors().Labels;
            return t.ne(Losses.IgnoreIndex).sum().item<long>();
        }).ToArray();
        double weighted = blocks.Zip(tokens, (loss, n) => loss * n).Sum() / tokens.Sum();
        Assert.Equal(LanguageModelEvaluation.Evaluate(gpt.Model, validation).MeanLoss, weighted, 4);
    }

    [Fact]
    public void The_pretrained_GPT_tokenizer_gives_back_every_validation_paragraph()
    {
        var tokenizer = loaded.Gpt.Tokenizer;
        foreach (var text in Datasets.BrownText(Split.Validation).Columns["Text"].Cast<string>())
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
    }

    [Fact]
    public void The_pretrained_GPT_continues_a_prompt_greedily_with_the_same_English_words_every_time()
    {
        var gpt = loaded.Gpt;
        var options = GenerationOptions.Greedy(30) with { StopAtEndOfText = false };
        var first = gpt.Complete("She looked at him and said", options);
        var second = gpt.Complete("She looked at him and said", options);
        Assert.Equal(first, second);
        var words = first.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(words, w => w is "the" or "of" or "and" or "to" or "a" or "in");
    }

    [Fact]
    public void LoRA_on_q_proj_and_v_proj_of_the_pretrained_GPT_takes_two_projections_per_layer()
    {
        var gpt = PretrainedGpt.Load();                                                     // its own copy: LoRA changes the model
        int layers = gpt.Model.Config.Layers;
        var peft = PeftModel.Create(gpt.Model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 8, LoraAlpha = 16 });
        Assert.Equal(Enumerable.Range(0, layers).SelectMany(i => new[] { $"model.layers.{i}.self_attn.q_proj", $"model.layers.{i}.self_attn.v_proj" }),
                     peft.Layers.Select(l => l.Path));
        // LoRA starts as the identity: the loss is the checkpoint's own.
        using var scope = NewDisposeScope();
        var ids = tensor(gpt.Tokenizer.Encode("The jury said it did not find that many of the voters were unhappy.").Select(i => (long)i).ToArray()).unsqueeze(0);
        using var _ = no_grad();
        var adapted = gpt.Model.call(ids);
        using (peft.DisableAdapters())
            Tensors.AssertClose(gpt.Model.call(ids), adapted, 1e-5, "logits with a fresh LoRA");
    }

    [Fact]
    public void The_pretrained_ViT_reproduces_its_documented_accuracy_on_a_slice_of_the_MNIST_test_split()
    {
        var metrics = Metrics(PretrainedVit.TinyMnist);
        var model = PretrainedVit.Load();
        var slice = ImageSet.FromDataFrame(Datasets.Mnist(Split.Test).Head(metrics.GetProperty("mnist_test_slice_images").GetInt32()));
        var (accuracy, _, loss) = ImageClassificationEvaluation.Evaluate(model, slice);
        Assert.Equal(metrics.GetProperty("mnist_test_slice_accuracy").GetDouble(), accuracy, 4);
        Assert.Equal(metrics.GetProperty("mnist_test_slice_loss").GetDouble(), loss, 3);
        Assert.True(accuracy > 0.9, $"accuracy {accuracy:P1} on the first {slice.Count} test digits");
    }
}

public sealed class ModelDirectoryTests
{
    [Fact]
    public void A_model_folder_is_found_under_data_models_by_walking_up()
    {
        string root = TempDirectory.Create();
        string folder = Path.Combine(root, "data", "models", "tiny-x");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
        string nested = Path.Combine(root, "a", "b");
        Directory.CreateDirectory(nested);
        Assert.Equal(folder, DataDirectory.FindModel("tiny-x", null, null, [nested]));
    }

    [Fact]
    public void A_missing_model_folder_names_where_it_looked_and_the_pretrain_commands()
    {
        string empty = TempDirectory.Create();
        var e = Assert.Throws<DirectoryNotFoundException>(() => DataDirectory.FindModel("tiny-x", null, null, [empty]));
        Assert.Contains("the model 'models/tiny-x'", e.Message);
        Assert.Contains("data/models/tiny-x/config.json", e.Message);
        Assert.Contains("pretrain gpt", e.Message);
    }
}

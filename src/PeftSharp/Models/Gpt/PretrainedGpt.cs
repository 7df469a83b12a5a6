using PeftSharp.Data;
using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// A <see cref="GptForCausalLM"/> with its tokenizer, as a checkpoint folder holds them: <c>config.json</c>
/// (<see cref="GptConfig"/>), <c>model.safetensors</c> (the state dict, float16) and <c>tokenizer.json</c>
/// (<see cref="GptTokenizer"/>). <see cref="Load(string)"/> takes a folder or the name of one under
/// <c>data/models/</c>, e.g. <see cref="TinyBrown"/>, the model pretrained on the Brown corpus.
/// </summary>
public sealed record PretrainedGpt(GptForCausalLM Model, GptTokenizer Tokenizer)
{
    /// <summary>The GPT pretrained here on the Brown corpus (<c>data/models/tiny-gpt-brown</c>).</summary>
    public const string TinyBrown = "tiny-gpt-brown";

    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors";

    /// <summary>Loads a checkpoint folder, or the folder of that name under <c>data/models/</c> (see
    /// <see cref="DataDirectory.FindModel(string)"/>). The model is in eval mode, float32, on the CPU.</summary>
    public static PretrainedGpt Load(string nameOrDirectory = TinyBrown)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(nameOrDirectory);
        string directory = File.Exists(Path.Combine(nameOrDirectory, ConfigFile)) ? nameOrDirectory : DataDirectory.FindModel(nameOrDirectory);
        var config = GptConfig.FromJson(File.ReadAllText(Path.Combine(directory, ConfigFile)), Path.Combine(directory, ConfigFile));
        var tokenizer = GptTokenizer.Load(directory);
        if (tokenizer.VocabSize != config.VocabSize)
            throw new InvalidDataException($"{directory}: tokenizer.json has {tokenizer.VocabSize} ids but config.json says vocab_size {config.VocabSize}; the two files come from different runs.");
        var model = new GptForCausalLM(config);
        ModelWeights.Load(model, Path.Combine(directory, WeightsFile));
        model.eval();
        return new PretrainedGpt(model, tokenizer);
    }

    /// <summary>Writes the three files into <paramref name="directory"/> (created if needed).</summary>
    public void Save(string directory, ScalarType storage = ScalarType.Float16)
    {
        Directory.CreateDirectory(directory);
        AtomicFile.WriteAllText(Path.Combine(directory, ConfigFile), Model.Config.ToJson());
        Tokenizer.Save(directory);
        ModelWeights.Save(Model, Path.Combine(directory, WeightsFile), storage, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>The text that follows <paramref name="prompt"/> (<see cref="GptGeneration.Complete"/>).</summary>
    public string Complete(string prompt, GenerationOptions? options = null) => GptGeneration.Complete(Model, Tokenizer, prompt, options);
}

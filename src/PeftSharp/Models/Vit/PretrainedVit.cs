using PeftSharp.Data;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Models.Vit;

/// <summary>
/// A <see cref="VitForImageClassification"/> as a checkpoint folder holds it: <c>config.json</c> (<see cref="VitConfig"/>)
/// and <c>model.safetensors</c> (float16). <see cref="Load"/> takes a folder or the name of one under
/// <c>data/models/</c>, e.g. <see cref="TinyMnist"/>, the model pretrained on the MNIST digits.
/// </summary>
public static class PretrainedVit
{
    /// <summary>The ViT pretrained here on MNIST (<c>data/models/tiny-vit-mnist</c>).</summary>
    public const string TinyMnist = "tiny-vit-mnist";

    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors";

    /// <summary>Loads a checkpoint folder, or the folder of that name under <c>data/models/</c>; eval mode, float32, CPU.</summary>
    public static VitForImageClassification Load(string nameOrDirectory = TinyMnist)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(nameOrDirectory);
        string directory = File.Exists(Path.Combine(nameOrDirectory, ConfigFile)) ? nameOrDirectory : DataDirectory.FindModel(nameOrDirectory);
        var config = VitConfig.FromJson(File.ReadAllText(Path.Combine(directory, ConfigFile)), Path.Combine(directory, ConfigFile));
        var model = new VitForImageClassification(config);
        ModelWeights.Load(model, Path.Combine(directory, WeightsFile));
        model.eval();
        return model;
    }

    /// <summary>Writes <c>config.json</c> and <c>model.safetensors</c> into <paramref name="directory"/>.</summary>
    public static void Save(VitForImageClassification model, string directory, ScalarType storage = ScalarType.Float16)
    {
        ArgumentNullException.ThrowIfNull(model);
        Directory.CreateDirectory(directory);
        AtomicFile.WriteAllText(Path.Combine(directory, ConfigFile), model.Config.ToJson());
        ModelWeights.Save(model, Path.Combine(directory, WeightsFile), storage, new Dictionary<string, string> { ["format"] = "pt" });
    }
}

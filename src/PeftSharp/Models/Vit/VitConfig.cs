using System.Text.Json;
using System.Text.Json.Serialization;

namespace PeftSharp.Models.Vit;

/// <summary>
/// Sizes of a <see cref="VitForImageClassification"/>, with the JSON field names of Hugging Face's <c>ViTConfig</c>
/// (<c>config.json</c>). Defaults: 28 x 28 grey images cut into 7 x 7 patches (16 patches + the [CLS] token).
/// </summary>
public sealed record VitConfig
{
    [JsonPropertyName("image_size")] public int ImageSize { get; init; } = 28;

    [JsonPropertyName("patch_size")] public int PatchSize { get; init; } = 7;

    [JsonPropertyName("num_channels")] public int Channels { get; init; } = 1;

    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; } = 64;

    [JsonPropertyName("num_hidden_layers")] public int Layers { get; init; } = 4;

    [JsonPropertyName("num_attention_heads")] public int Heads { get; init; } = 4;

    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; } = 128;

    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; init; } = 1e-12;

    /// <summary>Number of classes of <c>classifier</c>.</summary>
    [JsonPropertyName("num_labels")] public int Labels { get; init; } = 10;

    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "vit";

    [JsonIgnore] public int PatchesPerSide => ImageSize / PatchSize;

    [JsonIgnore] public int Patches => PatchesPerSide * PatchesPerSide;

    public void Validate()
    {
        if (PatchSize < 1 || ImageSize < PatchSize || ImageSize % PatchSize != 0)
            throw new ArgumentOutOfRangeException(nameof(PatchSize), PatchSize, $"patch_size must divide image_size {ImageSize}.");
        if (Channels < 1) throw new ArgumentOutOfRangeException(nameof(Channels), Channels, "num_channels must be positive.");
        if (HiddenSize < 1 || Heads < 1 || HiddenSize % Heads != 0)
            throw new ArgumentOutOfRangeException(nameof(Heads), Heads, $"num_attention_heads must divide hidden_size {HiddenSize}.");
        if (Layers < 1) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "num_hidden_layers must be at least 1.");
        if (IntermediateSize < 1) throw new ArgumentOutOfRangeException(nameof(IntermediateSize), IntermediateSize, "intermediate_size must be positive.");
        if (Labels < 1) throw new ArgumentOutOfRangeException(nameof(Labels), Labels, "num_labels must be at least 1.");
        if (LayerNormEps <= 0) throw new ArgumentOutOfRangeException(nameof(LayerNormEps), LayerNormEps, "layer_norm_eps must be positive.");
    }

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static VitConfig FromJson(string json, string source = "config.json")
    {
        VitConfig? config;
        try { config = JsonSerializer.Deserialize<VitConfig>(json); }
        catch (JsonException e) { throw new InvalidDataException($"{source} is not a valid ViT config ({e.Message})."); }
        if (config is null) throw new InvalidDataException($"{source} is empty; expected a JSON object with image_size, patch_size, hidden_size, ...");
        try { config.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new InvalidDataException($"{source}: {e.Message}"); }
        return config;
    }
}

using System.Text.Json;
using System.Text.Json.Serialization;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// Sizes of a <see cref="GptForCausalLM"/>. The JSON field names are those of Hugging Face's <c>LlamaConfig</c>
/// (<c>config.json</c>: <c>hidden_size</c>, <c>num_hidden_layers</c>, ...), so the checkpoint's config reads like one.
/// There is one key/value head per query head (no grouped-query attention) and no biases, as in Llama.
/// </summary>
public sealed record GptConfig
{
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; } = 8192;

    /// <summary>Width of the residual stream.</summary>
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; } = 256;

    /// <summary>Width of the SwiGLU feed-forward layer (<c>gate_proj</c>, <c>up_proj</c>).</summary>
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; } = 704;

    [JsonPropertyName("num_hidden_layers")] public int Layers { get; init; } = 4;

    [JsonPropertyName("num_attention_heads")] public int Heads { get; init; } = 4;

    /// <summary>Longest context the model was trained for; generation keeps the last this many tokens.</summary>
    [JsonPropertyName("max_position_embeddings")] public int MaxPositions { get; init; } = 256;

    /// <summary>Base of the rotary position frequencies.</summary>
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000;

    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-5;

    /// <summary><c>lm_head</c> uses <c>model.embed_tokens.weight</c> (and the checkpoint stores it once).</summary>
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; } = true;

    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "llama";

    [JsonIgnore] public int HeadSize => HiddenSize / Heads;

    public void Validate()
    {
        if (VocabSize < 2) throw new ArgumentOutOfRangeException(nameof(VocabSize), VocabSize, "The vocabulary needs at least 2 tokens.");
        if (HiddenSize < 1) throw new ArgumentOutOfRangeException(nameof(HiddenSize), HiddenSize, "hidden_size must be positive.");
        if (Heads < 1 || HiddenSize % Heads != 0)
            throw new ArgumentOutOfRangeException(nameof(Heads), Heads, $"num_attention_heads must divide hidden_size {HiddenSize}.");
        if (HeadSize % 2 != 0) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, $"Rotary positions need an even head size; hidden_size / heads = {HeadSize}.");
        if (IntermediateSize < 1) throw new ArgumentOutOfRangeException(nameof(IntermediateSize), IntermediateSize, "intermediate_size must be positive.");
        if (Layers < 1) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "num_hidden_layers must be at least 1.");
        if (MaxPositions < 1) throw new ArgumentOutOfRangeException(nameof(MaxPositions), MaxPositions, "max_position_embeddings must be positive.");
        if (RopeTheta <= 1) throw new ArgumentOutOfRangeException(nameof(RopeTheta), RopeTheta, "rope_theta must be above 1 (Llama uses 10000).");
        if (RmsNormEps <= 0) throw new ArgumentOutOfRangeException(nameof(RmsNormEps), RmsNormEps, "rms_norm_eps must be positive.");
    }

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static GptConfig FromJson(string json, string source = "config.json")
    {
        GptConfig? config;
        try { config = JsonSerializer.Deserialize<GptConfig>(json); }
        catch (JsonException e) { throw new InvalidDataException($"{source} is not a valid GPT config ({e.Message})."); }
        if (config is null) throw new InvalidDataException($"{source} is empty; expected a JSON object with hidden_size, num_hidden_layers, ...");
        try { config.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new InvalidDataException($"{source}: {e.Message}"); }
        return config;
    }
}

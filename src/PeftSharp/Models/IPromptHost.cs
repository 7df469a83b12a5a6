using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>Trainable embeddings put in front of a model's input embeddings (what prompt tuning trains). The model
/// extends its attention mask and positions over them and, so that every head keeps working on the real tokens,
/// drops their positions from its output.</summary>
public interface IInputPrompt
{
    /// <summary>P, the number of virtual tokens.</summary>
    int Length { get; }

    /// <summary>The prompt for a batch, (B, P, C), on the model's device and dtype (tensors made here belong to the
    /// caller's dispose scope).</summary>
    Tensor Embeddings(long batchSize);
}

/// <summary>
/// Extra key/value vectors put in front of every layer's keys and values (what prefix tuning and P-tuning v2 train, and
/// what Hugging Face models take as <c>past_key_values</c>). Set one on <see cref="IPromptHost.AttentionPrefix"/>; the
/// model then lets every token attend to the prefix and, as Hugging Face models do after <c>past_key_values</c>, numbers
/// the tokens' positions from <see cref="Length"/> (BERT's position table, the GPT's rotary angles; the prefix keys are
/// used as given, not rotated again). The provider owns its tensors (e.g. trainable parameters of an adapter module);
/// the model only reads them.
/// </summary>
public interface IAttentionPrefix
{
    /// <summary>P, the number of prefix vectors per layer (the same for every layer).</summary>
    int Length { get; }

    /// <summary>Key and value prefix for layer <paramref name="layer"/>, each (B, heads, P, head size), on the model's
    /// device and dtype. Tensors made here belong to the caller's dispose scope.</summary>
    (Tensor Key, Tensor Value) KeyValues(int layer, long batchSize);
}

/// <summary>
/// A model that soft-prompt methods can plug into: an <see cref="IInputPrompt"/> before the input embeddings (prompt
/// tuning, Lester et al. 2021) and an <see cref="IAttentionPrefix"/> before every layer's keys and values (prefix tuning,
/// Li and Liang 2021). Gives the sizes such adapters are made for (Hugging Face PEFT's <c>token_dim</c>,
/// <c>num_layers</c>, <c>num_attention_heads</c>) and the word embeddings they may start from.
/// </summary>
public interface IPromptHost
{
    int HiddenSize { get; }

    int NumLayers { get; }

    int NumAttentionHeads { get; }

    /// <summary>The input word embeddings (vocabulary, C), for prompts initialised from vocabulary tokens.</summary>
    Tensor InputEmbeddingWeight { get; }

    IInputPrompt? InputPrompt { get; set; }

    IAttentionPrefix? AttentionPrefix { get; set; }
}

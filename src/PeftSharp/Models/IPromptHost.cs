using PeftSharp.Models.Bert;
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

using static TorchSharp.torch;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// The design point for prefix tuning (Li and Liang 2021) and P-tuning v2: extra key/value positions that every query
/// of every layer can attend to, in front of the sequence's own. Set <see cref="GptForCausalLM.Prefix"/> and each
/// attention layer asks for its keys and values and puts them before the sequence's (after the sequence's keys are
/// rotated; the prefix keys are used as given). As in Hugging Face's Llama with <c>past_key_values</c>, the sequence's
/// rotary positions then start at <see cref="Length"/>, so a prefix made of a sequence's own cached keys and values
/// gives exactly the logits of running the whole sequence (the tests check this). Nothing in PeftSharp implements it
/// yet; a prefix-tuning method would hold the learned (or re-parameterised) tensors and hand them out here.
/// </summary>
public interface IAttentionPrefix
{
    /// <summary>Number of prefix positions P (the same in every layer).</summary>
    int Length { get; }

    /// <summary>The keys and values of layer <paramref name="layer"/> for a batch of <paramref name="batchSize"/>, each
    /// (B, heads, P, head size) on the model's device and dtype. The attention layer does not dispose them.</summary>
    (Tensor Keys, Tensor Values) KeysAndValues(int layer, long batchSize);
}

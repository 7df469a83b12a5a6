using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Bert;

/// <summary>How a sequence of BERT token vectors becomes one vector.</summary>
public enum BertPooling
{
    /// <summary>The mean of the token vectors, padding left out (sentence-transformers' mean pooling: all-MiniLM-L6-v2).</summary>
    Mean,

    /// <summary>The first ([CLS]) token's vector (snowflake-arctic-embed).</summary>
    Cls,

    /// <summary>Hugging Face's <c>pooler_output</c>: tanh(<c>pooler.dense</c>(first token)), what
    /// <c>BertForSequenceClassification</c> classifies. Needs a model with a pooler.</summary>
    Pooler,
}

/// <summary>Applies a <see cref="BertPooling"/>.</summary>
public static class BertPoolingExtensions
{
    /// <summary>last_hidden_state (B, T, C) and attention mask (B, T) or null → (B, C).</summary>
    public static Tensor Pool(this BertPooling pooling, BertModel model, Tensor lastHiddenState, Tensor? attentionMask) => pooling switch
    {
        BertPooling.Mean => MeanPool(lastHiddenState, attentionMask),
        BertPooling.Cls => lastHiddenState[.., 0],
        BertPooling.Pooler => model.PoolerOutput(lastHiddenState),
        _ => throw new ArgumentOutOfRangeException(nameof(pooling), pooling, "Use BertPooling.Mean, Cls or Pooler."),
    };

    /// <summary>Mean over the tokens whose mask is 1: hidden (B, T, C), mask (B, T) or null → (B, C).</summary>
    public static Tensor MeanPool(Tensor lastHiddenState, Tensor? attentionMask)
    {
        if (attentionMask is null) return lastHiddenState.mean([1]);
        using var scope = NewDisposeScope();
        var weights = attentionMask.to(lastHiddenState.dtype).unsqueeze(-1);                  // (B, T, 1)
        var sum = (lastHiddenState * weights).sum(1);                                         // (B, C)
        var count = weights.sum(1).clamp_min(1e-9);                                           // (B, 1), as sentence-transformers
        return (sum / count).MoveToOuterDisposeScope();
    }
}

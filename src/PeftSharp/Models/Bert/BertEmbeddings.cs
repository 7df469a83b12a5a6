using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary>
/// <c>embeddings</c>: word + position + token-type embeddings, then LayerNorm and dropout. Children:
/// <c>word_embeddings</c>, <c>position_embeddings</c>, <c>token_type_embeddings</c>, <c>LayerNorm</c>, <c>dropout</c>.
/// </summary>
public sealed class BertEmbeddings : Module<Tensor, Tensor?, Tensor?, Tensor>
{
    Module<Tensor, Tensor> word_embeddings;       // (vocab, C)
    Module<Tensor, Tensor> position_embeddings;   // (max positions, C)
    Module<Tensor, Tensor> token_type_embeddings; // (types, C)
    [ComponentName(Name = "LayerNorm")]
    Module<Tensor, Tensor> layerNorm;
    Module<Tensor, Tensor> dropout;

    public BertEmbeddings(BertConfig config) : base(nameof(BertEmbeddings))
    {
        word_embeddings = Embedding(config.VocabSize, config.HiddenSize);
        position_embeddings = Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        token_type_embeddings = Embedding(config.TypeVocabSize, config.HiddenSize);
        layerNorm = LayerNorm(config.HiddenSize, config.LayerNormEps);
        dropout = Dropout(config.HiddenDropoutProb);
        RegisterComponents();
    }

    /// <summary>Set by <see cref="BertModel.InputPrompt"/>: embeddings put before the word embeddings.</summary>
    internal IInputPrompt? Prompt { get; set; }

    /// <summary>The word embeddings' weight (vocabulary, C), read through an adapter wrapping them.</summary>
    internal Tensor WordEmbeddingWeight =>
        word_embeddings.named_parameters().First(p => p.name == "weight" || p.name == "base_layer.weight").parameter;

    /// <summary>ids (B, T), token types (B, T) or null for all 0, positions (B, P + T) or (1, P + T) or null for
    /// 0..P+T-1 → (B, P + T, C), where P is the length of the <see cref="Prompt"/> (0 without one; its token type is 0,
    /// as in Hugging Face PEFT's prompt tuning).</summary>
    public override Tensor forward(Tensor inputIds, Tensor? tokenTypeIds, Tensor? positionIds)
    {
        using var scope = NewDisposeScope();
        long b = inputIds.shape[0];
        int p = Prompt?.Length ?? 0;
        positionIds ??= arange(p + inputIds.shape[1], dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);
        tokenTypeIds ??= zeros_like(inputIds);
        var words = word_embeddings.call(inputIds);                                                   // (B, T, C)
        if (Prompt is { } prompt)
        {
            words = cat([prompt.Embeddings(b).to(words.dtype), words], 1);                             // (B, P + T, C)
            tokenTypeIds = cat([zeros(b, p, dtype: tokenTypeIds.dtype, device: tokenTypeIds.device), tokenTypeIds], 1);
        }
        var h = words + token_type_embeddings.call(tokenTypeIds) + position_embeddings.call(positionIds);
        return dropout.call(layerNorm.call(h)).MoveToOuterDisposeScope();
    }
}

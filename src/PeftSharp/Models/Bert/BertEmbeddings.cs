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

    /// <summary>ids (B, T), token types (B, T) or null for all 0, positions (B, T) or (1, T) or null for 0..T-1
    /// → (B, T, C).</summary>
    public override Tensor forward(Tensor inputIds, Tensor? tokenTypeIds, Tensor? positionIds)
    {
        using var scope = NewDisposeScope();
        positionIds ??= arange(inputIds.shape[1], dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);
        tokenTypeIds ??= zeros_like(inputIds);
        var h = word_embeddings.call(inputIds) + token_type_embeddings.call(tokenTypeIds) + position_embeddings.call(positionIds);
        return dropout.call(layerNorm.call(h)).MoveToOuterDisposeScope();
    }
}

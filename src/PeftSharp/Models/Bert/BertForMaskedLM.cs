using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary><c>cls.predictions.transform</c>: <c>dense</c>, GELU, <c>LayerNorm</c> (Hugging Face
/// <c>BertPredictionHeadTransform</c>).</summary>
public sealed class BertPredictionHeadTransform : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;   // (C → C)
    [ComponentName(Name = "LayerNorm")]
    Module<Tensor, Tensor> layerNorm;

    public BertPredictionHeadTransform(BertConfig config) : base(nameof(BertPredictionHeadTransform))
    {
        var linear = Linear(config.HiddenSize, config.HiddenSize);
        using (no_grad())
        {
            linear.weight!.normal_(0, 0.02);   // Hugging Face's initialisation
            linear.bias!.zero_();
        }
        dense = linear;
        layerNorm = LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden) => layerNorm.call(functional.gelu(dense.call(hidden)));   // (..., C)
}

/// <summary><c>cls.predictions</c>: the transform, then the decoder tied to the word embeddings plus <c>bias</c>
/// (Hugging Face <c>BertLMPredictionHead</c>).</summary>
public sealed class BertLMPredictionHead : Module<Tensor, Tensor, Tensor>
{
    BertPredictionHeadTransform transform;
    Parameter bias;   // (V)

    public BertLMPredictionHead(BertConfig config) : base(nameof(BertLMPredictionHead))
    {
        transform = new BertPredictionHeadTransform(config);
        bias = new Parameter(zeros(config.VocabSize));
        RegisterComponents();
    }

    /// <summary>hidden (..., C), tied word embeddings (V, C) → logits (..., V).</summary>
    public override Tensor forward(Tensor hidden, Tensor wordEmbeddings) => functional.linear(transform.call(hidden), wordEmbeddings, bias);
}

/// <summary><c>cls</c> (Hugging Face <c>BertOnlyMLMHead</c>).</summary>
public sealed class BertOnlyMLMHead : Module<Tensor, Tensor, Tensor>
{
    BertLMPredictionHead predictions;

    public BertOnlyMLMHead(BertConfig config) : base(nameof(BertOnlyMLMHead))
    {
        predictions = new BertLMPredictionHead(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor wordEmbeddings) => predictions.call(hidden, wordEmbeddings);
}

/// <summary>
/// BERT with Hugging Face's masked-language-model head (<c>BertForMaskedLM</c>, module names included:
/// <c>cls.predictions.transform.dense</c>, <c>.LayerNorm</c>, <c>cls.predictions.bias</c>; the decoder is tied to the
/// input word embeddings). The packaged sentence encoders ship no MLM head, so the head starts fresh and must train
/// (e.g. as <c>modules_to_save = ["cls"]</c> is not possible for a two-input module: train
/// <c>cls.predictions.transform.dense</c> / <c>LayerNorm</c>, or set requires_grad yourself). The tied decoder reads the
/// word embeddings through an adapter that may wrap them, so an invertible adapter (MAD-X) can sit at the embeddings
/// and, inverted, at <c>cls.predictions.transform.dense</c>.
/// </summary>
public sealed class BertForMaskedLM : Module<Tensor, Tensor?, Tensor?, Tensor>, IHasOutputHead
{
    /// <summary>Labels with this value are not predicted (PyTorch's cross-entropy default).</summary>
    public const long IgnoreIndex = -100;

    BertModel bert;
    BertOnlyMLMHead cls;

    public BertForMaskedLM(BertModel bert) : base(nameof(BertForMaskedLM))
    {
        this.bert = bert;
        cls = new BertOnlyMLMHead(bert.Config);
        RegisterComponents();
    }

    public BertModel Bert => bert;

    public string? OutputHeadPath => "cls.predictions.transform.dense";

    /// <summary>ids (B, T), mask (B, T) or null, token types or null → vocabulary logits (B, T, V).</summary>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = NewDisposeScope();
        var hidden = bert.call(inputIds, attentionMask, tokenTypeIds);                      // (B, T, C)
        return cls.call(hidden, ((IPromptHost)bert).InputEmbeddingWeight).MoveToOuterDisposeScope();   // (B, T, V)
    }
}

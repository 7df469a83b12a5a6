using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary>
/// A BERT encoder (<c>bert</c>) with a classification head (<c>dropout</c>, then <c>classifier</c>: Linear C → labels),
/// Hugging Face <c>BertForSequenceClassification</c>'s module names, so PEFT recipes carry over unchanged:
/// <c>new LoraConfig { TargetModules = ["query", "value"], ModulesToSave = ["classifier"] }</c>.
/// <para>The sentence vector the head sees is chosen by <see cref="Pooling"/>. <see cref="BertPooling.Pooler"/> is
/// Hugging Face's exact computation (tanh(<c>bert.pooler.dense</c>(first token))). Sentence-transformers models were
/// trained through their own pooling, not the pooler (all-MiniLM-L6-v2's pooler is an untrained leftover;
/// arctic-embed has none), so for them <see cref="BertPooling.Mean"/> / <see cref="BertPooling.Cls"/> (no extra
/// layer, no <c>pre_classifier</c>) are the better default and what <see cref="PretrainedBert.LoadForSequenceClassification"/>
/// picks. The head is initialised as Hugging Face does: weights N(0, 0.02), bias 0.</para>
/// </summary>
public sealed class BertForSequenceClassification : Module<Tensor, Tensor?, Tensor?, Tensor>, IHasOutputHead
{
    BertModel bert;
    Module<Tensor, Tensor> dropout;
    Module<Tensor, Tensor> classifier;   // (C → labels)

    public BertForSequenceClassification(BertModel bert, int numLabels, BertPooling pooling = BertPooling.Pooler, double? classifierDropout = null)
        : base(nameof(BertForSequenceClassification))
    {
        if (numLabels < 1) throw new ArgumentOutOfRangeException(nameof(numLabels), numLabels, "A classifier needs at least one label (1 for regression).");
        if (pooling == BertPooling.Pooler && bert.Pooler is null)
            throw new ArgumentException("BertPooling.Pooler needs a BERT with a pooler; this one has none. Use BertPooling.Cls or BertPooling.Mean.", nameof(pooling));
        double p = classifierDropout ?? bert.Config.HiddenDropoutProb;
        if (p is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(classifierDropout), p, "classifierDropout is in [0, 1).");
        this.bert = bert;
        dropout = Dropout(p);
        var head = Linear(bert.Config.HiddenSize, numLabels);
        using (no_grad())
        {
            head.weight!.normal_(0, 0.02);
            head.bias!.zero_();
        }
        classifier = head;
        Pooling = pooling;
        NumLabels = numLabels;
        RegisterComponents();
    }

    public BertModel Bert => bert;

    public BertPooling Pooling { get; }

    public int NumLabels { get; }

    public string? OutputHeadPath => "classifier";

    /// <summary>ids (B, T), mask (B, T) or null, token types (B, T) or null → logits (B, labels).</summary>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = NewDisposeScope();
        var hidden = bert.call(inputIds, attentionMask, tokenTypeIds);    // (B, T, C)
        var pooled = Pooling.Pool(bert, hidden, attentionMask);            // (B, C)
        return classifier.call(dropout.call(pooled)).MoveToOuterDisposeScope();
    }

    /// <summary>Logits (B, labels) for a tokenized batch.</summary>
    public Tensor Forward(BertBatch batch) => call(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds);
}

using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary>
/// <c>attention.self</c>: multi-head scaled dot-product attention with projections <c>query</c>, <c>key</c>,
/// <c>value</c> (Hugging Face <c>BertSelfAttention</c>). Returns the heads' concatenated context, before
/// <c>attention.output.dense</c>.
/// </summary>
public sealed class BertSelfAttention : Module<Tensor, Tensor?, Tensor>
{
    Module<Tensor, Tensor> query;   // (C → C)
    Module<Tensor, Tensor> key;     // (C → C)
    Module<Tensor, Tensor> value;   // (C → C)
    readonly int _heads;
    readonly double _dropout;

    public BertSelfAttention(BertConfig config, int layerIndex) : base(nameof(BertSelfAttention))
    {
        query = Linear(config.HiddenSize, config.HiddenSize);
        key = Linear(config.HiddenSize, config.HiddenSize);
        value = Linear(config.HiddenSize, config.HiddenSize);
        _heads = config.NumAttentionHeads;
        _dropout = config.AttentionProbsDropoutProb;
        LayerIndex = layerIndex;
        RegisterComponents();
    }

    /// <summary>Which encoder layer this is (the argument <see cref="IAttentionPrefix.KeyValues"/> receives).</summary>
    public int LayerIndex { get; }

    /// <summary>Set by <see cref="BertModel.AttentionPrefix"/>.</summary>
    internal IAttentionPrefix? Prefix { get; set; }

    /// <summary>hidden (B, T, C), additive mask (B, 1, 1, P + T) or null → context (B, T, C).</summary>
    public override Tensor forward(Tensor hidden, Tensor? additiveMask)
    {
        long b = hidden.shape[0], t = hidden.shape[1], c = hidden.shape[2];
        Tensor Heads(Tensor y) => y.view(b, t, _heads, c / _heads).transpose(1, 2);   // (B, H, T, D)
        var q = Heads(query.call(hidden));
        var k = Heads(key.call(hidden));
        var v = Heads(value.call(hidden));
        if (Prefix is { } prefix)
        {
            var (prefixKey, prefixValue) = prefix.KeyValues(LayerIndex, b);   // (B, H, P, D) each
            long[] expected = [b, _heads, prefix.Length, c / _heads];
            if (!prefixKey.shape.SequenceEqual(expected) || !prefixValue.shape.SequenceEqual(expected))
                throw new InvalidOperationException(
                    $"The attention prefix for layer {LayerIndex} has key [{string.Join(", ", prefixKey.shape)}] and value [{string.Join(", ", prefixValue.shape)}]; " +
                    $"expected [{string.Join(", ", expected)}] (batch, heads, prefix length, head size) for both.");
            k = cat([prefixKey, k], 2);                                          // (B, H, P + T, D)
            v = cat([prefixValue, v], 2);
        }
        var context = functional.scaled_dot_product_attention(q, k, v, additiveMask, p: training ? _dropout : 0);   // (B, H, T, D)
        return context.transpose(1, 2).reshape(b, t, c);
    }
}

/// <summary>
/// A sublayer's output: <c>dense</c>, dropout, residual add, <c>LayerNorm</c>. Serves as <c>attention.output</c>
/// (Hugging Face <c>BertSelfOutput</c>) and as the layer's <c>output</c> (<c>BertOutput</c>): the two are the same
/// computation with different input widths.
/// </summary>
public sealed class BertOutput : Module<Tensor, Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;   // (inputs → C)
    [ComponentName(Name = "LayerNorm")]
    Module<Tensor, Tensor> layerNorm;
    Module<Tensor, Tensor> dropout;

    public BertOutput(BertConfig config, int inputs) : base(nameof(BertOutput))
    {
        dense = Linear(inputs, config.HiddenSize);
        layerNorm = LayerNorm(config.HiddenSize, config.LayerNormEps);
        dropout = Dropout(config.HiddenDropoutProb);
        RegisterComponents();
    }

    /// <summary>sublayer output (B, T, inputs), residual (B, T, C) → (B, T, C). The projection runs inside a
    /// <see cref="SublayerContext"/> naming the residual and LayerNorm, for adapters placed at <c>dense</c> that need them
    /// (AdapterHub's Pfeiffer placement, He et al.'s parallel adapter).</summary>
    public override Tensor forward(Tensor hidden, Tensor residual)
    {
        Tensor projected;
        using (SublayerContext.Enter(residual, layerNorm)) projected = dense.call(hidden);   // (B, T, C)
        return layerNorm.call(dropout.call(projected) + residual);
    }
}

/// <summary><c>attention</c>: <c>self</c> (the heads) then <c>output</c> (projection, residual, LayerNorm).</summary>
public sealed class BertAttention : Module<Tensor, Tensor?, Tensor>
{
    BertSelfAttention self;
    BertOutput output;

    public BertAttention(BertConfig config, int layerIndex) : base(nameof(BertAttention))
    {
        self = new BertSelfAttention(config, layerIndex);
        output = new BertOutput(config, config.HiddenSize);
        RegisterComponents();
    }

    public BertSelfAttention Self => self;

    /// <summary>hidden (B, T, C), additive mask (B, 1, 1, P + T) or null → (B, T, C).</summary>
    public override Tensor forward(Tensor hidden, Tensor? additiveMask) => output.call(self.call(hidden, additiveMask), hidden);
}

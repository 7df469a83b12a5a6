using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary><c>intermediate</c>: <c>dense</c> (C → FFN) then GELU (the exact, erf form).</summary>
public sealed class BertIntermediate : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;   // (C → FFN)

    public BertIntermediate(BertConfig config) : base(nameof(BertIntermediate))
    {
        dense = Linear(config.HiddenSize, config.IntermediateSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden) => functional.gelu(dense.call(hidden));   // (B, T, C) → (B, T, FFN)
}

/// <summary><c>encoder.layer.N</c>: <c>attention</c>, then <c>intermediate</c> and <c>output</c> (post-LayerNorm).</summary>
public sealed class BertLayer : Module<Tensor, Tensor?, Tensor>
{
    BertAttention attention;
    BertIntermediate intermediate;
    BertOutput output;

    public BertLayer(BertConfig config, int layerIndex) : base(nameof(BertLayer))
    {
        attention = new BertAttention(config, layerIndex);
        intermediate = new BertIntermediate(config);
        output = new BertOutput(config, config.IntermediateSize);
        RegisterComponents();
    }

    public BertAttention Attention => attention;

    /// <summary>hidden (B, T, C), additive mask (B, 1, 1, P + T) or null → (B, T, C).</summary>
    public override Tensor forward(Tensor hidden, Tensor? additiveMask)
    {
        // One scope per layer: only the layer output leaves, so activations autograd does not need die here.
        using var scope = NewDisposeScope();
        var attended = attention.call(hidden, additiveMask);
        return output.call(intermediate.call(attended), attended).MoveToOuterDisposeScope();
    }
}

/// <summary><c>encoder</c>: the stack <c>layer.0</c> … <c>layer.N-1</c>.</summary>
public sealed class BertEncoder : Module<Tensor, Tensor?, Tensor>
{
    readonly ModuleList<BertLayer> layer;

    public BertEncoder(BertConfig config) : base(nameof(BertEncoder))
    {
        layer = new ModuleList<BertLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(i => new BertLayer(config, i)).ToArray());
        RegisterComponents();
    }

    public IReadOnlyList<BertLayer> Layers => layer.ToList();

    /// <summary>hidden (B, T, C), additive mask (B, 1, 1, P + T) or null → (B, T, C).</summary>
    public override Tensor forward(Tensor hidden, Tensor? additiveMask)
    {
        var h = hidden;
        foreach (var l in layer)
        {
            var next = l.call(h, additiveMask);
            if (!ReferenceEquals(h, hidden)) h.Dispose();   // autograd keeps what backward needs; inference frees it now
            h = next;
        }
        return h;
    }
}

/// <summary><c>pooler</c>: <c>dense</c> and tanh on the first ([CLS]) token, Hugging Face's <c>pooler_output</c>.</summary>
public sealed class BertPooler : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;   // (C → C)

    public BertPooler(BertConfig config) : base(nameof(BertPooler))
    {
        dense = Linear(config.HiddenSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden) => tanh(dense.call(hidden[.., 0]));   // (B, T, C) → (B, C)
}

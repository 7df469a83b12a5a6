using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>Sizes of a <see cref="TinyTransformer"/>.</summary>
/// <param name="DModel">Width of the residual stream.</param>
/// <param name="Heads">Attention heads (DModel must divide by it).</param>
/// <param name="Ffn">Width of the feed-forward layer.</param>
/// <param name="Layers">Number of blocks.</param>
/// <param name="Outputs">Width of the output head.</param>
/// <param name="VocabSize">When set, inputs are token ids (B, T) embedded by <c>embed</c> plus learned positions;
/// otherwise inputs are vectors (B, T, DModel).</param>
/// <param name="MaxLength">Longest sequence for the position table.</param>
/// <param name="Causal">Mask attention to earlier positions (decoder).</param>
public sealed record TransformerOptions(int DModel, int Heads, int Ffn, int Layers, int Outputs, int? VocabSize = null, int MaxLength = 128, bool Causal = false);

/// <summary>
/// Multi-head self-attention with projections named as in most PEFT recipes: <c>q</c>, <c>k</c>, <c>v</c>, <c>o</c>.
/// </summary>
public sealed class SelfAttention : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> q, k, v, o;
    readonly int _heads;
    readonly bool _causal;

    public SelfAttention(int dModel, int heads, bool causal) : base(nameof(SelfAttention))
    {
        if (dModel % heads != 0) throw new ArgumentException($"d_model {dModel} must be a multiple of heads {heads}.", nameof(heads));
        q = Linear(dModel, dModel);
        k = Linear(dModel, dModel);
        v = Linear(dModel, dModel);
        o = Linear(dModel, dModel);
        _heads = heads;
        _causal = causal;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, T, C) -> (B, T, C)
    {
        long b = x.shape[0], t = x.shape[1], c = x.shape[2];
        Tensor Split(Tensor y) => y.view(b, t, _heads, c / _heads).transpose(1, 2);   // (B, H, T, C/H)
        var attended = functional.scaled_dot_product_attention(Split(q.call(x)), Split(k.call(x)), Split(v.call(x)), is_casual: _causal);
        return o.call(attended.transpose(1, 2).reshape(b, t, c));
    }
}

/// <summary>The feed-forward part of a block: <c>fc1</c> → GELU → <c>fc2</c>.</summary>
public sealed class FeedForward : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> fc1, fc2;

    public FeedForward(int dModel, int ffn) : base(nameof(FeedForward))
    {
        fc1 = Linear(dModel, ffn);
        fc2 = Linear(ffn, dModel);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => fc2.call(functional.gelu(fc1.call(x)));   // (B, T, C) -> (B, T, C)
}

/// <summary>A pre-LayerNorm transformer block: x + attn(ln1(x)), then + mlp(ln2(x)).</summary>
public sealed class TransformerBlock : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> ln1, ln2;
    Module<Tensor, Tensor> attn;
    Module<Tensor, Tensor> mlp;

    public TransformerBlock(int dModel, int heads, int ffn, bool causal = false) : base(nameof(TransformerBlock))
    {
        ln1 = LayerNorm(dModel);
        attn = new SelfAttention(dModel, heads, causal);
        ln2 = LayerNorm(dModel);
        mlp = new FeedForward(dModel, ffn);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, T, C) -> (B, T, C)
    {
        // One scope per block: only the block output leaves, so activations autograd does not need die here.
        using var scope = NewDisposeScope();
        var h = x + attn.call(ln1.call(x));
        return (h + mlp.call(ln2.call(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A small pre-LN transformer (<c>layers.N.attn.{q,k,v,o}</c>, <c>layers.N.mlp.{fc1,fc2}</c>, <c>norm</c>,
/// <c>head</c>; <c>embed</c> and <c>pos</c> with a vocabulary). Used by the test matrix and the LoRA benchmark.
/// </summary>
public sealed class TinyTransformer : Module<Tensor, Tensor>, IHasOutputHead
{
    Module<Tensor, Tensor>? embed;
    Module<Tensor, Tensor>? pos;
    readonly TorchSharp.Modules.ModuleList<Module<Tensor, Tensor>> layers;
    Module<Tensor, Tensor> norm;
    Module<Tensor, Tensor> head;

    public TinyTransformer(TransformerOptions options) : base(nameof(TinyTransformer))
    {
        Options = options;
        if (options.VocabSize is int vocabulary)
        {
            embed = Embedding(vocabulary, options.DModel);
            pos = Embedding(options.MaxLength, options.DModel);
        }
        layers = new TorchSharp.Modules.ModuleList<Module<Tensor, Tensor>>(
            Enumerable.Range(0, options.Layers).Select(_ => (Module<Tensor, Tensor>)new TransformerBlock(options.DModel, options.Heads, options.Ffn, options.Causal)).ToArray());
        norm = LayerNorm(options.DModel);
        head = Linear(options.DModel, options.Outputs);
        RegisterComponents();
    }

    public TransformerOptions Options { get; }

    public string? OutputHeadPath => "head";

    public override Tensor forward(Tensor x)                       // ids (B, T) or vectors (B, T, C) -> (B, T, Outputs)
    {
        using var scope = NewDisposeScope();
        var h = x;
        if (embed is not null && pos is not null)
        {
            using var positions = arange(x.shape[1], device: x.device);
            h = embed.call(x) + pos.call(positions);
        }
        foreach (var layer in layers) h = layer.call(h);
        return head.call(norm.call(h)).MoveToOuterDisposeScope();
    }
}

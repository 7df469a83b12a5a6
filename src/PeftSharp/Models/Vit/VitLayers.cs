using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Vit;

// The parts of a ViT encoder layer, nested as Hugging Face nests them so the module paths match:
// layer.N.attention.attention.{query,key,value}, layer.N.attention.output.dense, layer.N.intermediate.dense,
// layer.N.output.dense, layer.N.layernorm_before / layernorm_after.

/// <summary>Multi-head self-attention projections <c>query</c>, <c>key</c>, <c>value</c> (HF <c>ViTSelfAttention</c>).</summary>
public sealed class VitSelfAttention : Module<Tensor, Tensor>
{
    [ComponentName(Name = "query")] Module<Tensor, Tensor> _query;
    [ComponentName(Name = "key")] Module<Tensor, Tensor> _key;
    [ComponentName(Name = "value")] Module<Tensor, Tensor> _value;
    readonly int _heads;

    public VitSelfAttention(VitConfig config) : base(nameof(VitSelfAttention))
    {
        _query = Linear(config.HiddenSize, config.HiddenSize);
        _key = Linear(config.HiddenSize, config.HiddenSize);
        _value = Linear(config.HiddenSize, config.HiddenSize);
        _heads = config.Heads;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, N, C) -> (B, N, C), before the output projection
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        Tensor Split(Tensor y) => y.view(b, n, _heads, c / _heads).transpose(1, 2);  // (B, H, N, C/H)
        var attended = functional.scaled_dot_product_attention(Split(_query.call(x)), Split(_key.call(x)), Split(_value.call(x)));
        return attended.transpose(1, 2).reshape(b, n, c).MoveToOuterDisposeScope();
    }
}

/// <summary>A Linear named <c>dense</c> (HF <c>ViTSelfOutput</c>, <c>ViTIntermediate</c> with GELU, <c>ViTOutput</c>).</summary>
public sealed class VitDense : Module<Tensor, Tensor>
{
    [ComponentName(Name = "dense")] Module<Tensor, Tensor> _dense;
    readonly bool _gelu;

    public VitDense(int inputs, int outputs, bool gelu) : base(nameof(VitDense))
    {
        _dense = Linear(inputs, outputs);
        _gelu = gelu;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => _gelu ? functional.gelu(_dense.call(x)) : _dense.call(x);
}

/// <summary><c>attention.attention</c> (the projections) then <c>attention.output.dense</c> (HF <c>ViTAttention</c>).</summary>
public sealed class VitAttention : Module<Tensor, Tensor>
{
    [ComponentName(Name = "attention")] readonly VitSelfAttention _attention;
    [ComponentName(Name = "output")] readonly VitDense _output;

    public VitAttention(VitConfig config) : base(nameof(VitAttention))
    {
        _attention = new VitSelfAttention(config);
        _output = new VitDense(config.HiddenSize, config.HiddenSize, gelu: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => _output.call(_attention.call(x));
}

/// <summary>A pre-LayerNorm encoder layer: <c>x + attention(layernorm_before(x))</c>, then
/// <c>+ output(intermediate(layernorm_after(h)))</c> (HF <c>ViTLayer</c>).</summary>
public sealed class VitLayer : Module<Tensor, Tensor>
{
    [ComponentName(Name = "attention")] readonly VitAttention _attention;
    [ComponentName(Name = "intermediate")] readonly VitDense _intermediate;
    [ComponentName(Name = "output")] readonly VitDense _output;
    [ComponentName(Name = "layernorm_before")] readonly LayerNorm _layernormBefore;
    [ComponentName(Name = "layernorm_after")] readonly LayerNorm _layernormAfter;

    public VitLayer(VitConfig config) : base(nameof(VitLayer))
    {
        _attention = new VitAttention(config);
        _intermediate = new VitDense(config.HiddenSize, config.IntermediateSize, gelu: true);
        _output = new VitDense(config.IntermediateSize, config.HiddenSize, gelu: false);
        _layernormBefore = LayerNorm(config.HiddenSize, config.LayerNormEps);
        _layernormAfter = LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, N, C) -> (B, N, C)
    {
        // One scope per layer: only its output leaves.
        using var scope = NewDisposeScope();
        var h = x + _attention.call(_layernormBefore.call(x));
        return (h + _output.call(_intermediate.call(_layernormAfter.call(h)))).MoveToOuterDisposeScope();
    }
}

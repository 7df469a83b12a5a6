using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// Causal multi-head self-attention with Llama's module names (<c>q_proj</c>, <c>k_proj</c>, <c>v_proj</c>,
/// <c>o_proj</c>, no biases) and rotary positions on queries and keys. Optional key/value prefix:
/// <see cref="IAttentionPrefix"/>.
/// </summary>
public sealed class GptAttention : Module<Tensor, Tensor>
{
    [ComponentName(Name = "q_proj")] Module<Tensor, Tensor> _qProj;
    [ComponentName(Name = "k_proj")] Module<Tensor, Tensor> _kProj;
    [ComponentName(Name = "v_proj")] Module<Tensor, Tensor> _vProj;
    [ComponentName(Name = "o_proj")] Module<Tensor, Tensor> _oProj;
    readonly GptConfig _config;
    readonly int _layer;

    public GptAttention(GptConfig config, int layer) : base(nameof(GptAttention))
    {
        _config = config;
        _layer = layer;
        _qProj = Linear(config.HiddenSize, config.HiddenSize, hasBias: false);
        _kProj = Linear(config.HiddenSize, config.HiddenSize, hasBias: false);
        _vProj = Linear(config.HiddenSize, config.HiddenSize, hasBias: false);
        _oProj = Linear(config.HiddenSize, config.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    /// <summary>Set by <see cref="GptForCausalLM.AttentionPrefix"/> (null: no prefix).</summary>
    internal IAttentionPrefix? Prefix { get; set; }

    public override Tensor forward(Tensor x)                       // (B, T, C) -> (B, T, C)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1], c = x.shape[2];
        var (q, k, v) = Project(x, Prefix?.Length ?? 0);                                    // (B, H, T, D) each
        Tensor attended;
        if (Prefix is null)
        {
            attended = functional.scaled_dot_product_attention(q, k, v, is_casual: true);
        }
        else
        {
            var (prefixKeys, prefixValues) = Prefix.KeyValues(_layer, b);
            CheckPrefix(prefixKeys, "keys", b);
            CheckPrefix(prefixValues, "values", b);
            long p = prefixKeys.shape[2];
            k = cat([prefixKeys, k], 2);                                                    // (B, H, P + T, D)
            v = cat([prefixValues, v], 2);
            // Every query sees the whole prefix and the sequence up to itself: (T, P + T), true = attend.
            var mask = cat([ones(t, p, ScalarType.Bool, x.device), ones(t, t, ScalarType.Bool, x.device).tril()], 1);
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
        }
        return _oProj.call(attended.transpose(1, 2).reshape(b, t, c)).MoveToOuterDisposeScope();
    }

    /// <summary>Queries, keys and values (B, H, T, D), queries and keys rotated for positions
    /// <paramref name="positionOffset"/> .. offset + T - 1.</summary>
    internal (Tensor Queries, Tensor Keys, Tensor Values) Project(Tensor x, long positionOffset)
    {
        long b = x.shape[0], t = x.shape[1];
        int heads = _config.Heads, d = _config.HeadSize;
        Tensor Split(Tensor y) => y.view(b, t, heads, d).transpose(1, 2);
        var (cos, sin) = RotaryEmbedding.Tables(t, positionOffset, d, _config.RopeTheta, x.device);
        return (RotaryEmbedding.Apply(Split(_qProj.call(x)), cos.to(x.dtype), sin.to(x.dtype)),
                RotaryEmbedding.Apply(Split(_kProj.call(x)), cos.to(x.dtype), sin.to(x.dtype)),
                Split(_vProj.call(x)));
    }

    void CheckPrefix(Tensor prefix, string what, long batch)
    {
        long p = Prefix!.Length;
        if (prefix.dim() != 4 || prefix.shape[0] != batch || prefix.shape[1] != _config.Heads || prefix.shape[2] != p || prefix.shape[3] != _config.HeadSize)
            throw new InvalidOperationException(
                $"The attention prefix gave layer {_layer} {what} of shape [{string.Join(", ", prefix.shape)}]; expected [{batch}, {_config.Heads}, {p}, {_config.HeadSize}] (batch, heads, prefix length, head size).");
    }
}

/// <summary>Llama's SwiGLU feed-forward layer: <c>down_proj(silu(gate_proj(x)) * up_proj(x))</c>, no biases.</summary>
public sealed class GptMlp : Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate_proj")] Module<Tensor, Tensor> _gateProj;
    [ComponentName(Name = "up_proj")] Module<Tensor, Tensor> _upProj;
    [ComponentName(Name = "down_proj")] Module<Tensor, Tensor> _downProj;

    public GptMlp(GptConfig config) : base(nameof(GptMlp))
    {
        _gateProj = Linear(config.HiddenSize, config.IntermediateSize, hasBias: false);
        _upProj = Linear(config.HiddenSize, config.IntermediateSize, hasBias: false);
        _downProj = Linear(config.IntermediateSize, config.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, T, C) -> (B, T, C)
    {
        using var scope = NewDisposeScope();
        return _downProj.call(functional.silu(_gateProj.call(x)) * _upProj.call(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>A pre-norm decoder block: <c>x + self_attn(input_layernorm(x))</c>, then <c>+ mlp(post_attention_layernorm(h))</c>.</summary>
public sealed class GptBlock : Module<Tensor, Tensor>
{
    [ComponentName(Name = "self_attn")] internal readonly GptAttention SelfAttention;
    [ComponentName(Name = "mlp")] readonly GptMlp _mlp;
    [ComponentName(Name = "input_layernorm")] internal readonly RmsNorm InputLayerNorm;
    [ComponentName(Name = "post_attention_layernorm")] readonly RmsNorm _postAttentionLayerNorm;

    public GptBlock(GptConfig config, int layer) : base(nameof(GptBlock))
    {
        SelfAttention = new GptAttention(config, layer);
        _mlp = new GptMlp(config);
        InputLayerNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        _postAttentionLayerNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (B, T, C) -> (B, T, C)
    {
        // One scope per block: only the block output leaves, so activations autograd does not need die here.
        using var scope = NewDisposeScope();
        var h = x + SelfAttention.call(InputLayerNorm.call(x));
        return (h + _mlp.call(_postAttentionLayerNorm.call(h))).MoveToOuterDisposeScope();
    }
}

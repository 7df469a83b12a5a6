using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Utils;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Gpt;

/// <summary>The decoder stack (Llama's <c>LlamaModel</c>): <c>embed_tokens</c>, <c>layers.N</c>, <c>norm</c>.</summary>
public sealed class GptModel : Module<Tensor, Tensor>
{
    [ComponentName(Name = "embed_tokens")] Module<Tensor, Tensor> _embedTokens;
    [ComponentName(Name = "layers")] internal readonly ModuleList<Module<Tensor, Tensor>> Layers;
    [ComponentName(Name = "norm")] readonly RmsNorm _norm;

    public GptModel(GptConfig config) : base(nameof(GptModel))
    {
        var embedding = Embedding(config.VocabSize, config.HiddenSize);
        // The token embedding is also the output matrix when tied: keep its values small, as Llama does (std 0.02).
        using (no_grad()) embedding.weight!.normal_(0, 0.02);
        _embedTokens = embedding;
        // The original embedding's weight, for the tied head even after an adapter takes its place in the field. A
        // delegate, not a field: RegisterComponents would register a Parameter field a second time.
        _embeddingWeight = () => embedding.get_parameter("weight")!;   // Embedding.weight makes a new handle per read
        Layers = new ModuleList<Module<Tensor, Tensor>>(
            Enumerable.Range(0, config.Layers).Select(i => (Module<Tensor, Tensor>)new GptBlock(config, i)).ToArray());
        _norm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    readonly Func<Parameter> _embeddingWeight;

    internal Module<Tensor, Tensor> EmbedTokens => _embedTokens;

    /// <summary>The token embedding matrix (V, C) of the original <c>embed_tokens</c>.</summary>
    internal Parameter EmbeddingWeight => _embeddingWeight();

    /// <summary>Set by <see cref="GptForCausalLM.InputPrompt"/>: embeddings put before the token embeddings.</summary>
    internal IInputPrompt? Prompt { get; set; }

    /// <summary>ids (B, T) → hidden states (B, P + T, C), where P is the length of the <see cref="Prompt"/> (0 without
    /// one): the prompt's virtual tokens come first, so every token attends to them.</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var h = _embedTokens.call(ids);                                                             // (B, T, C)
        if (Prompt is { } prompt) h = cat([prompt.Embeddings(ids.shape[0]).to(h.dtype), h], 1);  // (B, P + T, C)
        foreach (var layer in Layers) h = layer.call(h);
        return _norm.call(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A small decoder-only transformer for causal language modelling with the module names of Hugging Face's
/// <c>LlamaForCausalLM</c>, so PEFT target lists written for Llama apply unchanged: <c>model.embed_tokens</c>,
/// <c>model.layers.N.self_attn.{q,k,v,o}_proj</c>, <c>model.layers.N.mlp.{gate,up,down}_proj</c>, RMSNorms
/// <c>input_layernorm</c> / <c>post_attention_layernorm</c> / <c>model.norm</c>, and <c>lm_head</c>. Positions are
/// rotary (no position table, so nothing to outgrow but <see cref="GptConfig.MaxPositions"/>, which generation keeps
/// to). Soft prompts and prefixes plug in through <see cref="IPromptHost"/>. With <see cref="GptConfig.TieWordEmbeddings"/> the head multiplies by the embedding matrix and owns no
/// parameter (<c>lm_head</c> is then not a Linear, so no adapter goes there). Input ids (B, T), output logits (B, T, V).
/// </summary>
public sealed class GptForCausalLM : Module<Tensor, Tensor>, IHasOutputHead, IPromptHost
{
    [ComponentName(Name = "model")] readonly GptModel _model;
    [ComponentName(Name = "lm_head")] Module<Tensor, Tensor> _lmHead;

    public GptForCausalLM(GptConfig config) : base(nameof(GptForCausalLM))
    {
        config.Validate();
        Config = config;
        _model = new GptModel(config);
        _lmHead = config.TieWordEmbeddings ? new TiedOutputHead(() => _model.EmbeddingWeight) : Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    public GptConfig Config { get; }

    public string? OutputHeadPath => "lm_head";

    /// <summary>Key/value vectors every layer's attention puts before its own (prefix tuning); null for none. The
    /// sequence's rotary positions then start after the prefix. See <see cref="IAttentionPrefix"/>.</summary>
    public IAttentionPrefix? AttentionPrefix
    {
        get => _prefix;
        set
        {
            if (value is not null && value.Length < 0)
                throw new ArgumentOutOfRangeException(nameof(value), value.Length, "An attention prefix has a length of 0 or more.");
            _prefix = value;
            foreach (var block in _model.Layers.OfType<GptBlock>()) block.SelfAttention.Prefix = value;
        }
    }
    IAttentionPrefix? _prefix;

    /// <summary>Embeddings put before the token embeddings (prompt tuning); null for none. Every token attends to them
    /// and the logits drop their positions, so the output stays (B, T, V). See <see cref="IInputPrompt"/>.</summary>
    public IInputPrompt? InputPrompt
    {
        get => _model.Prompt;
        set => _model.Prompt = value;
    }

    /// <summary>Positions taken by the prompt and the prefix, which the tokens' <see cref="GptConfig.MaxPositions"/>
    /// share.</summary>
    public int VirtualPositions => (InputPrompt?.Length ?? 0) + (AttentionPrefix?.Length ?? 0);

    int IPromptHost.HiddenSize => Config.HiddenSize;

    int IPromptHost.NumLayers => Config.Layers;

    int IPromptHost.NumAttentionHeads => Config.Heads;

    Tensor IPromptHost.InputEmbeddingWeight => _model.EmbeddingWeight;

    internal GptModel Decoder => _model;

    public override Tensor forward(Tensor ids)                     // (B, T) -> (B, T, V)
    {
        if (ids.dim() != 2) throw new ArgumentException($"Expected token ids of shape (batch, length), got [{string.Join(", ", ids.shape)}].", nameof(ids));
        int virtualPositions = VirtualPositions;
        if (ids.shape[1] + virtualPositions > Config.MaxPositions)
            throw new ArgumentException($"{ids.shape[1]} tokens{(virtualPositions == 0 ? "" : $" + a prompt / prefix of {virtualPositions}")} exceed the {Config.MaxPositions} positions the model was trained for; pass at most the last {Config.MaxPositions - virtualPositions} tokens.", nameof(ids));
        using var scope = NewDisposeScope();
        var hidden = _model.call(ids);                                                              // (B, P + T, C)
        int p = InputPrompt?.Length ?? 0;
        if (p > 0) hidden = hidden[.., p..];                                                        // (B, T, C)
        return _lmHead.call(hidden).MoveToOuterDisposeScope();
    }

    /// <summary>The number of parameters, each shared tensor counted once.</summary>
    public long ParameterCount => parameters().Sum(p => p.numel());
}

/// <summary><c>lm_head</c> of a model with tied embeddings: <c>h @ E^T</c> with the embedding matrix E, which it reads
/// through a delegate so that it is neither a parameter nor a child here (state dicts hold E once, as
/// <c>model.embed_tokens.weight</c>, as Hugging Face saves tied models).</summary>
public sealed class TiedOutputHead : Module<Tensor, Tensor>
{
    readonly Func<Tensor> _weight;

    public TiedOutputHead(Func<Tensor> weight) : base(nameof(TiedOutputHead))
    {
        _weight = weight;
    }

    public override Tensor forward(Tensor h) => functional.linear(h, _weight());     // (B, T, C) -> (B, T, V)
}

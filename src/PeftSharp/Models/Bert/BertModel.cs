using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Bert;

/// <summary>
/// A BERT encoder whose module tree is Hugging Face's <c>BertModel</c>, name for name: <c>embeddings.word_embeddings</c>,
/// <c>encoder.layer.N.attention.self.query|key|value</c>, <c>encoder.layer.N.attention.output.dense|LayerNorm</c>,
/// <c>encoder.layer.N.intermediate.dense</c>, <c>encoder.layer.N.output.dense|LayerNorm</c>, <c>pooler.dense</c>. So
/// <c>state_dict</c> keys are PyTorch's, PEFT target lists such as <c>["query", "value"]</c> pick the same layers, and
/// Hugging Face PEFT adapter files for BERT load unchanged. Every Linear and Embedding sits in a field typed
/// <c>Module&lt;Tensor, Tensor&gt;</c>, so adapters can take its place.
/// <para>Inputs: token ids (B, T); optionally an attention mask (B, T) with 1 for tokens and 0 for padding (null: all
/// tokens), and token type ids (B, T) (null: all 0). Output: <c>last_hidden_state</c> (B, T, C). See
/// <see cref="PoolerOutput"/> for <c>pooler_output</c> and <see cref="BertPooling"/> for sentence vectors.</para>
/// </summary>
public sealed class BertModel : Module<Tensor, Tensor?, Tensor?, Tensor>, IPromptHost
{
    BertEmbeddings embeddings;
    BertEncoder encoder;
    BertPooler? pooler;
    IAttentionPrefix? _prefix;
    IInputPrompt? _prompt;

    public BertModel(BertConfig config) : base(nameof(BertModel))
    {
        config.Validate();
        Config = config;
        embeddings = new BertEmbeddings(config);
        encoder = new BertEncoder(config);
        if (config.AddPoolingLayer) pooler = new BertPooler(config);
        RegisterComponents();
    }

    public BertConfig Config { get; }

    public BertEmbeddings Embeddings => embeddings;

    public BertEncoder Encoder => encoder;

    /// <summary>The <c>pooler</c>, or null when the model has none (<see cref="BertConfig.AddPoolingLayer"/>).</summary>
    public BertPooler? Pooler => pooler;

    /// <summary>Key/value vectors every layer's attention prepends to its own (prefix tuning); null for none. See
    /// <see cref="IAttentionPrefix"/>.</summary>
    public IAttentionPrefix? AttentionPrefix
    {
        get => _prefix;
        set
        {
            if (value is not null && value.Length < 0)
                throw new ArgumentOutOfRangeException(nameof(value), value.Length, "An attention prefix has a length of 0 or more.");
            _prefix = value;
            foreach (var layer in encoder.Layers) layer.Attention.Self.Prefix = value;
        }
    }

    /// <summary>Embeddings put before the input embeddings (prompt tuning); null for none. Every token attends to
    /// them, positions count them, and the output drops their positions, so it stays (B, T, C). See
    /// <see cref="IInputPrompt"/>.</summary>
    public IInputPrompt? InputPrompt
    {
        get => _prompt;
        set
        {
            _prompt = value;
            embeddings.Prompt = value;
        }
    }

    int IPromptHost.HiddenSize => Config.HiddenSize;

    int IPromptHost.NumLayers => Config.NumHiddenLayers;

    int IPromptHost.NumAttentionHeads => Config.NumAttentionHeads;

    Tensor IPromptHost.InputEmbeddingWeight => embeddings.WordEmbeddingWeight;

    /// <summary>ids (B, T), mask (B, T) or null, token types (B, T) or null → last_hidden_state (B, T, C).</summary>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"input_ids must be (batch, length) token ids; got shape [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attention_mask has shape [{string.Join(", ", attentionMask.shape)}]; it must match input_ids [{string.Join(", ", inputIds.shape)}].", nameof(attentionMask));
        if (tokenTypeIds is not null && !tokenTypeIds.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"token_type_ids has shape [{string.Join(", ", tokenTypeIds.shape)}]; it must match input_ids [{string.Join(", ", inputIds.shape)}].", nameof(tokenTypeIds));

        using var scope = NewDisposeScope();
        long b = inputIds.shape[0], t = inputIds.shape[1];
        int prefixLength = _prefix?.Length ?? 0;
        int promptLength = _prompt?.Length ?? 0;
        if (prefixLength + promptLength + t > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"{t} tokens{(prefixLength + promptLength > 0 ? $" after a prefix / prompt of {prefixLength + promptLength}" : "")} exceed the model's {Config.MaxPositionEmbeddings} positions; truncate the input.", nameof(inputIds));

        // Positions continue after the prefix, as Hugging Face BERT numbers them after past_key_values; a prompt's
        // virtual tokens take the first positions of the sequence, as they do when PEFT passes inputs_embeds.
        var positions = arange(prefixLength, prefixLength + promptLength + t, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);   // (1, Q + T)
        var hidden = embeddings.call(inputIds, tokenTypeIds, positions);                                                         // (B, Q + T, C)
        var additiveMask = AdditiveMask(attentionMask, b, prefixLength + promptLength, hidden.dtype);                          // (B, 1, 1, P + Q + T) or null
        var output = encoder.call(hidden, additiveMask);                                                                        // (B, Q + T, C)
        if (promptLength > 0) output = output[.., promptLength..];                                                              // (B, T, C)
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>last_hidden_state (B, T, C) for a tokenized batch.</summary>
    public Tensor Forward(BertBatch batch) => call(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds);

    /// <summary>Hugging Face's <c>pooler_output</c> (B, C) from <c>last_hidden_state</c> (B, T, C): tanh(dense(first token)).</summary>
    public Tensor PoolerOutput(Tensor lastHiddenState) =>
        pooler?.call(lastHiddenState) ?? throw new InvalidOperationException("This BERT has no pooler (BertConfig.AddPoolingLayer is false); use BertPooling.Cls or BertPooling.Mean instead.");

    // 0 where a key may be attended, the dtype's most negative value where not (Hugging Face's extended mask). Null when
    // nothing is masked, so attention takes its unmasked path.
    static Tensor? AdditiveMask(Tensor? attentionMask, long batch, int prefixLength, ScalarType dtype)
    {
        if (attentionMask is null) return null;
        using (var allOnes = attentionMask.ne(0).all())
            if (allOnes.item<bool>()) return null;
        var mask = attentionMask.to(dtype);                                                               // (B, T)
        if (prefixLength > 0) mask = cat([ones(batch, prefixLength, dtype: dtype, device: mask.device), mask], 1);   // (B, P + T)
        return ((1 - mask) * finfo(dtype).min).view(batch, 1, 1, -1);
    }
}

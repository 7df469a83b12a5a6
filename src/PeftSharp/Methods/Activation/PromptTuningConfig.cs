using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>How prompt tuning's virtual tokens start (PEFT <c>prompt_tuning_init</c>).</summary>
public enum PromptTuningInit
{
    /// <summary>"RANDOM": N(0, 1), as nn.Embedding starts (PEFT's default).</summary>
    [JsonStringEnumMemberName("RANDOM")]
    Random,

    /// <summary>"SAMPLE_VOCAB": the embeddings of randomly drawn vocabulary tokens (Lester et al. 2021, §3).</summary>
    [JsonStringEnumMemberName("SAMPLE_VOCAB")]
    SampleVocab,

    /// <summary>"TEXT": the embeddings of the tokens of a text (<see cref="PromptTuningConfig.InitTokenIds"/>),
    /// repeated to fill P.</summary>
    [JsonStringEnumMemberName("TEXT")]
    Text,
}

/// <summary>
/// Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning", §2): P trainable
/// embeddings are prepended to the input embeddings; nothing else trains. Field names, defaults and the file
/// (<c>prompt_embeddings</c>, (P, token_dim)) are Hugging Face PEFT's <c>PromptTuningConfig</c>. The model's output keeps
/// only the real tokens' positions (see <see cref="PeftSharp.Models.IInputPrompt"/>).
/// </summary>
public sealed record PromptTuningConfig : PromptLearningConfig
{
    [JsonPropertyName("prompt_tuning_init"), Option("init", "prompt_tuning_init: random | sample_vocab | text (text needs InitTokenIds: use the library)")]
    public PromptTuningInit PromptTuningInit { get; init; } = PromptTuningInit.Random;

    /// <summary>For <see cref="PromptTuningInit.Text"/>: the token ids whose embeddings start the prompt (tokenize
    /// <see cref="PromptTuningInitText"/> with the model's tokenizer, without special tokens).</summary>
    [JsonIgnore]
    public IReadOnlyList<int>? InitTokenIds { get; init; }

    /// <summary>PEFT <c>prompt_tuning_init_text</c>, kept for the file.</summary>
    [JsonPropertyName("prompt_tuning_init_text")]
    public string? PromptTuningInitText { get; init; }

    public override string MethodName => "prompt-tuning";

    public override string PeftType => "PROMPT_TUNING";

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        // Only a new prompt needs the text's token ids; a loaded one takes the file's values.
        if (initialize && PromptTuningInit == PromptTuningInit.Text && InitTokenIds is not { Count: > 0 })
            throw new ArgumentException("prompt_tuning_init TEXT needs InitTokenIds: the ids of the init text's tokens (e.g. tokenizer.EncodeToIds(text) without [CLS]/[SEP]).", nameof(InitTokenIds));
        var host = HostOf(model);
        WithSizesOf(host);
        return new PromptEmbedding(this, host, initialize);
    }

    protected internal override void WriteFixedFields(JsonObject json)
    {
        base.WriteFixedFields(json);
        json["tokenizer_name_or_path"] = null;
        json["tokenizer_kwargs"] = null;
    }
}

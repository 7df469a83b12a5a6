using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Models;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>What prompt and prefix tuning share: they target no layer but the model's <see cref="IPromptHost"/>
/// hooks, their file has Hugging Face PEFT's prompt-learning fields (<c>num_virtual_tokens</c>, <c>token_dim</c>,
/// <c>num_transformer_submodules</c>, <c>num_attention_heads</c>, <c>num_layers</c>) and one tensor,
/// <c>prompt_embeddings</c>.</summary>
public abstract record PromptLearningConfig : AdapterConfig
{
    public const string FileKey = "prompt_embeddings";

    /// <summary>PEFT <c>num_virtual_tokens</c>: P.</summary>
    [JsonPropertyName("num_virtual_tokens"), Option("tokens", "num_virtual_tokens: P", Min = 1, Max = 4096)]
    public int NumVirtualTokens { get; init; } = 20;

    /// <summary>PEFT <c>token_dim</c>: the model's hidden size (filled in from the model).</summary>
    [JsonPropertyName("token_dim")]
    public int? TokenDim { get; init; }

    /// <summary>PEFT <c>num_layers</c> (filled in from the model).</summary>
    [JsonPropertyName("num_layers")]
    public int? NumLayers { get; init; }

    /// <summary>PEFT <c>num_attention_heads</c> (filled in from the model).</summary>
    [JsonPropertyName("num_attention_heads")]
    public int? NumAttentionHeads { get; init; }

    public override bool TargetsLayers => false;

    public override string SupportedLayerTypes => "none: it plugs into the model's prompt hooks (IPromptHost)";

    public override bool CanHold(Module module) => false;

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        throw new InvalidOperationException($"{MethodName} adapts no layer; it works through the model's IPromptHost.");

    public override void Validate()
    {
        base.Validate();
        if (TargetModules is not null) throw new ArgumentException($"{MethodName} adapts no layer; leave target_modules unset.", nameof(TargetModules));
    }

    /// <summary>The model's prompt hooks; throws naming what the model lacks.</summary>
    public IPromptHost HostOf(Module model) =>
        model.modules().OfType<IPromptHost>().FirstOrDefault() ?? (model as IPromptHost) ?? throw new ArgumentException(
            $"{MethodName} needs a model with prompt hooks (PeftSharp.Models.IPromptHost, e.g. BertModel); {model.GetType().Name} has none.");

    /// <summary>The config with the model's sizes filled in, checking sizes already there against the model.</summary>
    public PromptLearningConfig WithSizesOf(IPromptHost host)
    {
        void Check(int? value, int actual, string field)
        {
            if (value is int v && v != actual)
                throw new ArgumentException($"{field} is {v} in the config but the model has {actual}: was the adapter made for another model?", field);
        }
        Check(TokenDim, host.HiddenSize, "token_dim");
        Check(NumLayers, host.NumLayers, "num_layers");
        Check(NumAttentionHeads, host.NumAttentionHeads, "num_attention_heads");
        return this with { TokenDim = host.HiddenSize, NumLayers = host.NumLayers, NumAttentionHeads = host.NumAttentionHeads };
    }

    /// <summary>PEFT's prompt-learning configs have no target fields.</summary>
    protected internal override IEnumerable<string> OmittedCommonFields => ["target_modules", "exclude_modules", "layers_to_transform", "layers_pattern"];

    protected internal override void WriteFixedFields(JsonObject json) => json["num_transformer_submodules"] = 1;

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file) =>
        json["num_transformer_submodules"] is null || (json["num_transformer_submodules"] is JsonValue v && v.TryGetValue<int>(out var n) && n == 1) ? this
            : throw new AdapterConfigException($"{file}: num_transformer_submodules={json["num_transformer_submodules"]!.ToJsonString()} (an encoder-decoder) is not supported; PeftSharp's models have one transformer stack.");

    /// <summary>PEFT's one prompt-learning tensor has no module path.</summary>
    public override IReadOnlyList<string> ModelLevelKeys => [FileKey];
}

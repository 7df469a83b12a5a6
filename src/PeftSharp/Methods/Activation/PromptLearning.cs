using System.Text.Json.Nodes;
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
    public int NumVirtualTokens { get; init; } = 20;

    /// <summary>PEFT <c>token_dim</c>: the model's hidden size (filled in from the model).</summary>
    public int? TokenDim { get; init; }

    /// <summary>PEFT <c>num_layers</c> (filled in from the model).</summary>
    public int? NumLayers { get; init; }

    /// <summary>PEFT <c>num_attention_heads</c> (filled in from the model).</summary>
    public int? NumAttentionHeads { get; init; }

    public override bool TargetsLayers => false;

    public override string SupportedLayerTypes => "none: it plugs into the model's prompt hooks (IPromptHost)";

    public override bool CanHold(Module module) => false;

    public override AdapterModule CreateAdapter(string path, Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor> baseLayer, bool initialize) =>
        throw new InvalidOperationException($"{MethodName} adapts no layer; it works through the model's IPromptHost.");

    public override void Validate()
    {
        if (NumVirtualTokens < 1) throw new ArgumentOutOfRangeException(nameof(NumVirtualTokens), NumVirtualTokens, "num_virtual_tokens must be at least 1, e.g. 20.");
        if (TargetModules is not null) throw new ArgumentException($"{MethodName} adapts no layer; leave target_modules unset.", nameof(TargetModules));
        if (ModulesToSave is { } save && save.Any(string.IsNullOrWhiteSpace))
            throw new ArgumentException("modules_to_save holds module names such as \"classifier\"; an entry is empty.", nameof(ModulesToSave));
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

    /// <summary>PEFT's prompt-learning fields (no target fields: PEFT's prompt-learning configs have none).</summary>
    protected JsonObject PromptLearningJson()
    {
        var json = new JsonObject
        {
            ["peft_type"] = PeftType,
            ["task_type"] = TaskType,
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["revision"] = null,
            ["auto_mapping"] = null,
            ["inference_mode"] = true,
            ["peft_version"] = "0.20.0",
            ["num_virtual_tokens"] = NumVirtualTokens,
            ["token_dim"] = TokenDim,
            ["num_transformer_submodules"] = 1,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_layers"] = NumLayers,
            ["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode)m).ToArray()),
        };
        return json;
    }

    /// <summary>Reads the shared prompt-learning fields into <paramref name="config"/>.</summary>
    protected static T ReadPromptLearning<T>(T config, JsonObject json, string file) where T : PromptLearningConfig
    {
        int submodules = PeftJson.GetOr(json, "num_transformer_submodules", 1, file);
        if (submodules != 1)
            throw new AdapterConfigException($"{file}: num_transformer_submodules={submodules} (an encoder-decoder) is not supported; PeftSharp's models have one transformer stack.");
        return PeftJson.ReadCommon(config, json, file) with
        {
            NumVirtualTokens = PeftJson.GetOr(json, "num_virtual_tokens", 20, file),
            TokenDim = json["token_dim"] is null ? null : PeftJson.Get<int>(json["token_dim"], file, "token_dim"),
            NumLayers = json["num_layers"] is null ? null : PeftJson.Get<int>(json["num_layers"], file, "num_layers"),
            NumAttentionHeads = json["num_attention_heads"] is null ? null : PeftJson.Get<int>(json["num_attention_heads"], file, "num_attention_heads"),
        };
    }
}

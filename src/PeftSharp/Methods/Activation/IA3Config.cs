using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// (IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
/// §3.3): learned vectors rescale activations, k = l_k ⊙ W_k x, v = l_v ⊙ W_v x and, in the feed-forward part,
/// W_2 (l_ff ⊙ f(W_1 x)); the vectors start at 1. Field names, file layout (<c>ia3_l</c>, shape (out, 1), or (1, in) for
/// a feed-forward module whose input is scaled) and merging follow Hugging Face PEFT's <c>IA3Config</c>.
/// </summary>
public sealed record IA3Config : AdapterConfig
{
    /// <summary>PEFT <c>feedforward_modules</c>: the targets whose <em>input</em> is scaled (the FFN's second
    /// projection, so l_ff scales f(W_1 x)); must be among the targets. The others scale their output.</summary>
    [JsonPropertyName("feedforward_modules"), JsonConverter(typeof(TargetModulesJsonConverter))]
    [Option("feedforward", "feedforward_modules: comma-separated targets whose input is scaled (e.g. output.dense)")]
    public TargetModules? FeedforwardModules { get; init; }

    /// <summary>PEFT <c>init_ia3_weights</c>: start the vectors at 1 (identity); false draws them from N(0, 1) (tests).</summary>
    [JsonPropertyName("init_ia3_weights")]
    public bool InitIa3Weights { get; init; } = true;

    public override string MethodName => "ia3";

    public override string PeftType => "IA3";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    /// <summary>Whether the target at <paramref name="path"/> scales its input (a feed-forward module).</summary>
    public bool IsFeedforward(string path) => FeedforwardModules is { } ff && !ff.IsAllLinear && TargetMatcher.IsTarget(ff, path);

    public override bool Merges => true;

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        return new IA3LinearAdapter(weight, IsFeedforward(context.Path), context.Initialize && !InitIa3Weights);
    }

    public override void Validate()
    {
        base.Validate();
        if (LayersToTransform is not null || LayersPattern is not null)
            throw new ArgumentException("PEFT's (IA)³ has no layers_to_transform / layers_pattern; choose the layers with a regex in target_modules.", nameof(LayersToTransform));
    }

    /// <summary>PEFT's <c>IA3Config</c> has no layer selection fields.</summary>
    protected internal override IEnumerable<string> OmittedCommonFields => ["layers_to_transform", "layers_pattern"];

    protected internal override void WriteFixedFields(JsonObject json) => json["fan_in_fan_out"] = false;

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file) =>
        json["fan_in_fan_out"] is JsonValue v && v.TryGetValue<bool>(out var fan) && fan
            ? throw new AdapterConfigException($"{file}: fan_in_fan_out=true (GPT-2 Conv1D weights) is not supported; PeftSharp's Linear layers are (out, in).")
            : this;

    public override IReadOnlyList<string> FileTensorMarkers => [".ia3_l"];
}

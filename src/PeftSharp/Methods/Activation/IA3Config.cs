using System.Text.Json.Nodes;
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
    public TargetModules? FeedforwardModules { get; init; }

    /// <summary>PEFT <c>init_ia3_weights</c>: start the vectors at 1 (identity); false draws them from N(0, 1) (tests).</summary>
    public bool InitIa3Weights { get; init; } = true;

    public override string MethodName => "ia3";

    public override string PeftType => "IA3";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    /// <summary>Whether the target at <paramref name="path"/> scales its input (a feed-forward module).</summary>
    public bool IsFeedforward(string path) => FeedforwardModules is { } ff && !ff.IsAllLinear && TargetMatcher.IsTarget(ff, path);

    public override AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize)
    {
        var weight = AdapterModule.BaseWeight(baseLayer);
        return new IA3LinearAdapter(weight, IsFeedforward(path), initialize && !InitIa3Weights);
    }

    public override JsonObject ToPeftJson(bool asPlainDelta = true)
    {
        var json = new JsonObject();
        PeftJson.WriteCommon(json, this);
        json["feedforward_modules"] = PeftJson.Targets(FeedforwardModules);
        json["fan_in_fan_out"] = false;
        json["init_ia3_weights"] = InitIa3Weights;
        return json;
    }

    public static IA3Config FromPeftJson(JsonObject json, string file)
    {
        if (PeftJson.GetOr(json, "fan_in_fan_out", false, file))
            throw new AdapterConfigException($"{file}: fan_in_fan_out=true (GPT-2 Conv1D weights) is not supported; PeftSharp's Linear layers are (out, in).");
        var config = new IA3Config
        {
            FeedforwardModules = PeftJson.ReadTargets(json, "feedforward_modules", file),
            InitIa3Weights = PeftJson.GetOr(json, "init_ia3_weights", true, file),
        };
        return PeftJson.ReadCommon(config, json, file);
    }
}

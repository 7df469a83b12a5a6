using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// Prefix tuning (Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", §4.2-4.3): P
/// trainable key and value vectors per layer are prepended to every attention's keys and values (K' = [P_K; K],
/// V' = [P_V; V]); optionally reparameterised by an MLP, P = MLP(P') with P' (P, C) (§4.3, for stable training). Field
/// names and the file (<c>prompt_embeddings</c>, (P, num_layers·2·token_dim), laid out as PEFT's
/// <c>past_key_values</c>: per layer l, key = slot 2l, value = slot 2l+1, each (heads, head size)) are Hugging Face
/// PEFT's <c>PrefixTuningConfig</c>. As in PEFT, a prefix trained with the MLP is saved as the MLP's output, so it loads
/// as a plain table (for inference; the MLP itself is not in the file).
/// </summary>
public sealed record PrefixTuningConfig : PromptLearningConfig
{
    /// <summary>PEFT <c>prefix_projection</c>: reparameterise the prefix by an MLP during training.</summary>
    public bool PrefixProjection { get; init; }

    /// <summary>PEFT <c>encoder_hidden_size</c>: the MLP's hidden width (null: token_dim).</summary>
    public int? EncoderHiddenSize { get; init; }

    public override string MethodName => "prefix-tuning";

    public override string PeftType => "PREFIX_TUNING";

    public override void Validate()
    {
        base.Validate();
        if (EncoderHiddenSize is < 1) throw new ArgumentOutOfRangeException(nameof(EncoderHiddenSize), EncoderHiddenSize, "encoder_hidden_size must be at least 1.");
    }

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        var host = HostOf(model);
        WithSizesOf(host);
        return new PrefixEncoder(this, host, projection: initialize && PrefixProjection);
    }

    public override JsonObject ToPeftJson(bool asPlainDelta = true)
    {
        var json = PromptLearningJson();
        json["prefix_projection"] = PrefixProjection;
        json["encoder_hidden_size"] = EncoderHiddenSize ?? TokenDim;
        return json;
    }

    public static PrefixTuningConfig FromPeftJson(JsonObject json, string file) =>
        ReadPromptLearning(new PrefixTuningConfig
        {
            PrefixProjection = PeftJson.GetOr(json, "prefix_projection", false, file),
            EncoderHiddenSize = json["encoder_hidden_size"] is null ? null : PeftJson.Get<int>(json["encoder_hidden_size"], file, "encoder_hidden_size"),
        }, json, file);
}

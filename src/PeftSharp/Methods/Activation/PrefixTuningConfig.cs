using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
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
    [JsonPropertyName("prefix_projection"), Option("projection", "prefix_projection: reparameterise by an MLP")]
    public bool PrefixProjection { get; init; }

    /// <summary>PEFT <c>encoder_hidden_size</c>: the MLP's hidden width (null: token_dim).</summary>
    [JsonPropertyName("encoder_hidden_size"), Option("hidden", "encoder_hidden_size of the MLP (default: the model width)", Min = 1, Max = 65536)]
    public int? EncoderHiddenSize { get; init; }

    public override string MethodName => "prefix-tuning";

    public override string PeftType => "PREFIX_TUNING";

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        var host = HostOf(model);
        WithSizesOf(host);
        return new PrefixEncoder(this, host, projection: initialize && PrefixProjection);
    }

    protected internal override void WriteFixedFields(JsonObject json)
    {
        base.WriteFixedFields(json);
        json["encoder_hidden_size"] = EncoderHiddenSize ?? TokenDim;
    }
}

using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// LayerNorm tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning",
/// §3): only the LayerNorms' gain and bias train. As Hugging Face PEFT's <c>LNTuningConfig</c> (<c>peft_type</c>
/// "LN_TUNING"), each adapter trains its own copy of every targeted LayerNorm (<c>ln_tuning_layers.weight</c>,
/// <c>.bias</c> in the file), so the base stays untouched until a merge, which puts the copy's values into the base.
/// Targets such as <c>["LayerNorm"]</c> (BERT) or <c>["ln1", "ln2", "norm"]</c>.
/// </summary>
public sealed record LnTuningConfig : AdapterConfig
{
    public override string MethodName => "ln-tuning";

    public override string PeftType => "LN_TUNING";

    public override string SupportedLayerTypes => "LayerNorm";

    public override bool CanHold(Module module) => module is TorchSharp.Modules.LayerNorm { elementwise_affine: true };

    public override AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize) =>
        new LnTuningAdapter((TorchSharp.Modules.LayerNorm)baseLayer, path);

    public override JsonObject ToPeftJson(bool asPlainDelta = true)
    {
        var json = new JsonObject();
        PeftJson.WriteCommon(json, this);
        return json;
    }

    public static LnTuningConfig FromPeftJson(JsonObject json, string file) => PeftJson.ReadCommon(new LnTuningConfig(), json, file);
}

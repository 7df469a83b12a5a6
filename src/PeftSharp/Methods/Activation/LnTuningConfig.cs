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

    public override bool Merges => true;

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        new LnTuningAdapter((TorchSharp.Modules.LayerNorm)context.BaseLayer, context.Path);

    public override void Validate()
    {
        base.Validate();
        if (LayersToTransform is not null || LayersPattern is not null)
            throw new ArgumentException("PEFT's LN tuning has no layers_to_transform / layers_pattern; choose the layers with a regex in target_modules.", nameof(LayersToTransform));
    }

    /// <summary>PEFT's <c>LNTuningConfig</c> has no layer selection fields.</summary>
    protected internal override IEnumerable<string> OmittedCommonFields => ["layers_to_transform", "layers_pattern"];

    public override IReadOnlyList<string> FileTensorMarkers => [".ln_tuning_layers."];
}

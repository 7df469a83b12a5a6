using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// BitFit (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
/// Language-models", §2): only the bias terms train. Written as a per-module bias change Δb (zero at init) rather than by
/// unfreezing the base biases in place, so that, like every other adapter here, it can be disabled, deleted, kept
/// beside another adapter and saved on its own; the training is the same (the gradient of b + Δb with respect to Δb is
/// that of b) and merging adds Δb to b. Targets default to every module with a bias (Linear, LayerNorm, ...). Saved
/// with <c>peft_type</c> "BITFIT" (this library's layout), tensor <c>bitfit_bias</c> per module.
/// </summary>
public sealed record BitFitConfig : AdapterConfig
{
    public BitFitConfig() => TargetModules = Adapters.TargetModules.Regex(".*");

    public override string MethodName => "bitfit";

    public override string PeftType => "BITFIT";

    public override string SupportedLayerTypes => "any module with its own bias parameter (Linear, LayerNorm, Embedding-free)";

    public override bool CanHold(Module module) =>
        module is Module<Tensor, Tensor> && module.named_parameters(recurse: false).Any(p => p.name == "bias") && module.named_parameters(recurse: false).Any(p => p.name == "weight");

    public override bool Merges => true;

    public override AdapterModule CreateAdapter(AdapterContext context) => new BitFitAdapter(context.BaseLayer.get_parameter("bias")!);

    public override IReadOnlyList<string> FileTensorMarkers => [".bitfit_bias"];
}

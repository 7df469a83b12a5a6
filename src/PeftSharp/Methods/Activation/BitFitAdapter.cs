using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>BitFit at one module (Ben Zaken et al. 2022, §2): y = f(x; W, b + Δb) = base(x) + Δb for modules whose bias
/// is added last (Linear, LayerNorm). <c>bitfit_bias</c> has the bias's shape and starts at 0; merging adds it to b.</summary>
public sealed class BitFitAdapter : AdapterModule
{
    readonly Parameter bitfit_bias;

    public BitFitAdapter(Tensor baseBias) : base(nameof(BitFitAdapter))
    {
        bitfit_bias = new Parameter(zeros_like(baseBias));
        register_parameter("bitfit_bias", bitfit_bias);
    }

    public override string MethodName => "bitfit";

    public override bool CanMerge => true;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) => result.add_(bitfit_bias);

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var _ = no_grad();
        return BaseWeight(baseLayer).clone();   // the weight does not change; the bias does (Merge)
    }

    public override bool MergeIsFinite(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        return isfinite(bitfit_bias).all().item<bool>();
    }

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        baseLayer.get_parameter("bias")!.add_(bitfit_bias);
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        baseLayer.get_parameter("bias")!.sub_(bitfit_bias);
    }
}

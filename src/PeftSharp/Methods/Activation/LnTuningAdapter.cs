using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>LayerNorm tuning at one LayerNorm (Zhao et al. 2023, §3; PEFT's <c>LNTuningLayer</c>): a trainable copy,
/// <c>ln_tuning_layers</c>, replaces the base LayerNorm's output. Merging writes the copy's gain and bias into the base
/// (and keeps the originals for unmerging).</summary>
public sealed class LnTuningAdapter : AdapterModule
{
    readonly TorchSharp.Modules.LayerNorm ln_tuning_layers;
    Tensor? _originalWeight, _originalBias;

    public LnTuningAdapter(TorchSharp.Modules.LayerNorm baseLayer, string path) : base(nameof(LnTuningAdapter))
    {
        ln_tuning_layers = (TorchSharp.Modules.LayerNorm)ModuleCloner.Clone(baseLayer, path);
        register_module("ln_tuning_layers", ln_tuning_layers);
    }

    public override string MethodName => "ln-tuning";

    public override bool CanMerge => true;

    /// <summary>The copy's output replaces the result so far (its contribution is copy(x) − base(x)).</summary>
    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.add_(ln_tuning_layers.call(x) - baseLayer.call(x));

    public override Tensor? TryFusedForward(Tensor x, Module<Tensor, Tensor> baseLayer) => ln_tuning_layers.call(x);

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var _ = no_grad();
        return ln_tuning_layers.weight!.clone();
    }

    public override bool MergeIsFinite(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        return isfinite(ln_tuning_layers.weight!).all().logical_and(isfinite(ln_tuning_layers.bias!).all()).item<bool>();
    }

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (weight, bias) = (BaseWeight(baseLayer), baseLayer.get_parameter("bias")!);
        _originalWeight = weight.detach().clone().DetachFromDisposeScope();
        _originalBias = bias.detach().clone().DetachFromDisposeScope();
        weight.copy_(mergedWeight);
        bias.copy_(ln_tuning_layers.bias!);
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        if (_originalWeight is null || _originalBias is null) return;
        using (no_grad())
        {
            BaseWeight(baseLayer).copy_(_originalWeight);
            baseLayer.get_parameter("bias")!.copy_(_originalBias);
        }
        _originalWeight.Dispose();
        _originalBias.Dispose();
        _originalWeight = _originalBias = null;
    }

    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (ln_tuning_layers.weight! - BaseWeight(baseLayer)).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _originalWeight?.Dispose();
            _originalBias?.Dispose();
        }
        base.Dispose(disposing);
    }
}

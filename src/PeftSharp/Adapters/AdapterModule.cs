using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// One named adapter's tensors at one layer (e.g. LoRA's <c>lora_A</c> and <c>lora_B</c>). Its parameter names are
/// the names Hugging Face PEFT writes after the module path, so a file key is
/// <c>base_model.model.&lt;layer path&gt;.&lt;parameter name&gt;</c>. An <see cref="AdapterLayer"/> owns several of these.
/// </summary>
public abstract class AdapterModule : Module
{
    protected AdapterModule(string name) : base(name) { }

    /// <summary>The method's name, e.g. "lora" or "dora".</summary>
    public abstract string MethodName { get; }

    /// <summary>The adapter's rank where the method has one (shown in summaries), else null.</summary>
    public virtual int? Rank => null;

    /// <summary>The layer that holds this adapter (set when it is added), so an adapter that composes its siblings
    /// (ScaLearn, AdapterFusion) can find them.</summary>
    public AdapterLayer? Layer { get; internal set; }

    /// <summary>The forward context in force (per-row task ids, routing record), or null outside
    /// <see cref="PeftModel.Use"/>. Multi-task adapters read <see cref="AdapterLayer.RowTaskIds"/>.</summary>
    protected ForwardContext? Context => Layer?.Context;

    /// <summary>
    /// Adds this adapter's effect to <paramref name="result"/>, the layer output so far (base output plus the
    /// adapters applied before this one), for input <paramref name="x"/>. May write into <paramref name="result"/>
    /// in place and return it: the layer guarantees it owns that tensor.
    /// </summary>
    public abstract Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer);

    /// <summary>
    /// This adapter's contribution alone, <c>Apply(x, baseOutput) - baseOutput</c>, for compositions that sum or weigh
    /// several adapters' contributions (<see cref="AdapterComposition"/>, ScaLearn, AdapterFusion). Methods whose
    /// contribution is a branch of their own (bottleneck adapters) return it directly.
    /// </summary>
    public virtual Tensor Delta(Tensor x, Tensor baseOutput, Module<Tensor, Tensor> baseLayer) =>
        Apply(x, baseOutput.clone(), baseLayer).sub_(baseOutput);

    /// <summary>
    /// The layer's whole output (base plus this adapter) computed in one go, when this is the only active adapter and
    /// the method has a faster fused form for this base layer; null to use base output + <see cref="Apply"/>.
    /// </summary>
    public virtual Tensor? TryFusedForward(Tensor x, Module<Tensor, Tensor> baseLayer) => null;

    /// <summary>
    /// This adapter as a per-row low-rank product, Δy = s · B A dropout(x) (LoRA, rsLoRA, PiSSA/OLoRA once attached), so a
    /// mixed batch can apply many such adapters in one gathered batched product (<see cref="LowRankBatch"/>); null for
    /// adapters that are not one (the grouped loop runs those).
    /// </summary>
    public virtual LowRankForm? LowRank => null;

    /// <summary>True when the adapter can be folded into the base weights.</summary>
    public virtual bool CanMerge => false;

    /// <summary>Why this adapter cannot merge (shown when a merge is asked for).</summary>
    public virtual string CannotMergeReason => $"{MethodName} changes the layer's output, not its weights, so it cannot be folded into them.";

    /// <summary>The base weight with this adapter folded in, computed without changing anything, so a safe merge
    /// can check it before writing.</summary>
    public virtual Tensor MergedWeight(Module<Tensor, Tensor> baseLayer) => throw new NotSupportedException(CannotMergeReason);

    /// <summary>Whether merging gives finite values (the check of a safe merge); by default, whether
    /// <see cref="MergedWeight"/> is finite. Methods that also change other base tensors (biases) check those too.</summary>
    public virtual bool MergeIsFinite(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        return isfinite(MergedWeight(baseLayer)).all().item<bool>();
    }

    /// <summary>Writes <paramref name="mergedWeight"/> (from <see cref="MergedWeight"/>) into the base layer and keeps
    /// what unmerging needs.</summary>
    public virtual void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        BaseWeight(baseLayer).copy_(mergedWeight);
    }

    /// <summary>Restores the base layer as it was before <see cref="Merge"/>.</summary>
    public virtual void Unmerge(Module<Tensor, Tensor> baseLayer) => throw new NotSupportedException(CannotMergeReason);

    /// <summary>The change this adapter makes to the base weight (same shape as it), for analysis and merging;
    /// null for methods that do not change weights.</summary>
    public virtual Tensor? DeltaWeight(Module<Tensor, Tensor> baseLayer) => null;

    /// <summary>Called once the adapter sits in its layer and every other target succeeded: the place for an
    /// initialisation that changes the base weights (PiSSA and OLoRA write the residual here).</summary>
    public virtual void OnAttached(Module<Tensor, Tensor> baseLayer) { }

    /// <summary>
    /// The tensors written to <c>adapter_model.safetensors</c>, keyed by their name after the layer path
    /// (e.g. <c>lora_A.weight</c>). By default every parameter under its own name. With
    /// <paramref name="asPlainDelta"/> an adapter whose initialisation changed the base weights returns the
    /// equivalent adapter for the original weights (PEFT's PiSSA/OLoRA conversion).
    /// </summary>
    public virtual IEnumerable<(string Name, Tensor Value)> TensorsForFile(bool asPlainDelta) => FileTensors();

    /// <summary>
    /// The tensors a file holds for this adapter and loads back into, by name: every parameter and every buffer (frozen
    /// projections, masks, index tables, importance statistics), as PEFT saves its methods' buffers. TorchSharp registers
    /// every Tensor field as a buffer, so a buffer whose name starts with an underscore (a private field such as a cached
    /// initial value) is scratch and stays out of the file.
    /// </summary>
    public virtual IEnumerable<(string Name, Tensor Tensor)> FileTensors() =>
        named_parameters().Select(p => (p.name, (Tensor)p.parameter))
            .Concat(named_buffers().Where(b => !b.name.Split('.')[^1].StartsWith('_')).Select(b => (b.name, b.buffer)));

    /// <summary>Whether the parameter <paramref name="name"/> (as in <c>named_parameters()</c>) trains while the adapter
    /// is active. By default every parameter does; a method that trains a subset (only singular values, only a
    /// diagonal) says which, and the engine leaves the others frozen.</summary>
    public virtual bool Trains(string name) => true;

    /// <summary>The base layer's <c>weight</c> parameter.</summary>
    public static Parameter BaseWeight(Module<Tensor, Tensor> baseLayer) =>
        baseLayer.get_parameter("weight") ?? throw new InvalidOperationException($"{baseLayer.GetType().Name} has no 'weight' parameter.");
}

/// <summary>An adapter whose effect is an additive weight change W' = W + dW: merge and unmerge follow from
/// <see cref="DeltaWeight"/>.</summary>
public abstract class WeightDeltaAdapter : AdapterModule
{
    protected WeightDeltaAdapter(string name) : base(name) { }

    public override bool CanMerge => true;

    public abstract override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer);

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        return (weight + DeltaWeight(baseLayer).to(weight.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>True when dW is computed from W itself (Hydra's sequential branch, Transformed LoRA's W·T): after a
    /// merge W' − dW(W') is not W, so a merge keeps W and an unmerge restores it instead of subtracting.</summary>
    protected virtual bool DeltaReadsBaseWeight => false;

    Tensor? _weightBeforeMerge;   // (out, in), only when DeltaReadsBaseWeight and merged

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        if (DeltaReadsBaseWeight)
        {
            _weightBeforeMerge?.Dispose();
            using (NewDisposeScope())
            using (no_grad()) _weightBeforeMerge = BaseWeight(baseLayer).detach().clone().DetachFromDisposeScope();
        }
        base.Merge(baseLayer, mergedWeight);
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weight = BaseWeight(baseLayer);
        if (!DeltaReadsBaseWeight)
        {
            weight.sub_(DeltaWeight(baseLayer).to(weight.dtype));
            return;
        }
        if (_weightBeforeMerge is null)
            throw new InvalidOperationException($"This {MethodName} adapter is not merged, so there is nothing to unmerge.");
        weight.copy_(_weightBeforeMerge);
        _weightBeforeMerge.Dispose();
        _weightBeforeMerge = null;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _weightBeforeMerge?.Dispose();
        base.Dispose(disposing);
    }
}

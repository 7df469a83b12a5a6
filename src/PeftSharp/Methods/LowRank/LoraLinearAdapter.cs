using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// LoRA on a Linear layer: result += s · B (A · dropout(x)). Tensors are named as PEFT names them
/// (<c>lora_A.weight</c> [r, in], <c>lora_B.weight</c> [out, r], <c>lora_B.bias</c> with lora_bias).
/// </summary>
public class LoraLinearAdapter : WeightDeltaAdapter
{
    protected readonly Linear lora_A;
    protected readonly Linear lora_B;
    protected readonly Dropout? lora_dropout;
    readonly double _dropout;

    // PiSSA / OLoRA: the initial A and B (to save the adapter as a plain LoRA on the original weights) and the
    // residual the base weight takes once the adapter is attached.
    Tensor? _initialA, _initialB, _pendingResidual;

    /// <remarks>residualInit: for an init whose factors come from outside (CorDA, which needs the input covariance),
    /// W → (A, B, residual).</remarks>
    public LoraLinearAdapter(int r, double scaling, double dropout, bool loraBias, Tensor baseWeight, LoraInit? init,
                             Func<Tensor, (Tensor A, Tensor B, Tensor Residual)>? residualInit = null)
        : base(nameof(LoraLinearAdapter))
    {
        R = r;
        Scaling = scaling;
        _dropout = dropout;
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        lora_A = Linear(inFeatures, r, hasBias: false, device: baseWeight.device, dtype: baseWeight.dtype);
        lora_B = Linear(r, outFeatures, hasBias: loraBias, device: baseWeight.device, dtype: baseWeight.dtype);
        register_module("lora_A", lora_A);
        register_module("lora_B", lora_B);
        if (dropout > 0)
        {
            lora_dropout = Dropout(dropout);
            register_module("lora_dropout", lora_dropout);
        }
        if (init is not null) Initialize(init, baseWeight, residualInit);
    }

    public override string MethodName => "lora";

    public int R { get; }

    public override int? Rank => R;

    /// <summary>s = alpha / r (or alpha / √r with rsLoRA).</summary>
    public double Scaling { get; internal set; }

    public Parameter A => lora_A.weight!;

    public Parameter B => lora_B.weight!;

    void Initialize(LoraInit init, Tensor baseWeight, Func<Tensor, (Tensor A, Tensor B, Tensor Residual)>? residualInit)
    {
        using var _ = no_grad();
        if (init == LoraInit.Default)
        {
            init_kaiming(lora_A.weight!);
            nn.init.zeros_(lora_B.weight!);
        }
        else if (init == LoraInit.Gaussian)
        {
            nn.init.normal_(lora_A.weight!, std: 1.0 / R);
            nn.init.zeros_(lora_B.weight!);
        }
        else if (init == LoraInit.Random)
        {
            // nn.Linear's own initialisation for both: the adapter is not the identity.
        }
        else if (init.ChangesBaseWeights)
        {
            var (a, b, residual) = init == LoraInit.Olora ? LowRankInit.Olora(baseWeight, R, Scaling)
                : init == LoraInit.Corda ? (residualInit ?? throw new ArgumentException("init_lora_weights \"corda\" needs the layer's input covariance (calibration batches)."))(baseWeight)
                : LowRankInit.Pissa(baseWeight, R, Scaling, init.PissaIterations);
            lora_A.weight!.copy_(a);
            lora_B.weight!.copy_(b);
            _initialA = a;
            _initialB = b;
            _pendingResidual = residual;
        }
        else throw new ArgumentOutOfRangeException(nameof(init), init.Name, $"init_lora_weights '{init.Name}' is not available here.");
        if (lora_B.bias is { } bias) nn.init.zeros_(bias);

        static void init_kaiming(Tensor t) => nn.init.kaiming_uniform_(t, a: Math.Sqrt(5));
    }

    public override void OnAttached(Module<Tensor, Tensor> baseLayer)
    {
        if (_pendingResidual is null) return;
        using (no_grad()) BaseWeight(baseLayer).copy_(_pendingResidual);
        _pendingResidual.Dispose();
        _pendingResidual = null;
    }

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var input = lora_dropout is null ? x : lora_dropout.call(x);
        // The (..., out) product is added into the result in place, so backward passes the output gradient through
        // without copying it.
        if (lora_B.bias is null) return result.add_(LoraLinearFunction.LowRank(input, lora_A.weight!, lora_B.weight!, Scaling));   // (..., out)
        // s is folded into the small (..., r) hidden state.
        var hidden = functional.linear(input, lora_A.weight!).mul_(Scaling);                                  // (..., r)
        result.add_(functional.linear(hidden, lora_B.weight!, lora_B.bias is null ? null : lora_B.bias * Scaling));   // (..., out)
        return result;
    }

    /// <summary>
    /// The whole layer in one autograd node (<see cref="LoraLinearFunction"/>) when this is the only active adapter on
    /// a frozen Linear: less memory at the backward peak, fewer kernels. Dropout in training is drawn here exactly as
    /// libtorch's CPU dropout draws it (a Bernoulli(1 − p) noise divided by 1 − p, from the same generator), so the
    /// fused and the unfused layer see the same mask for the same seed.
    /// </summary>
    public override Tensor? TryFusedForward(Tensor x, Module<Tensor, Tensor> baseLayer)
    {
        bool dropping = lora_dropout is { training: true } && _dropout > 0;
        if (baseLayer is not Linear linear || linear.weight!.requires_grad || linear.bias is { requires_grad: true }
            || lora_B.bias is not null || (dropping && _dropout >= 1) || !x.is_floating_point() || x.device_type != DeviceType.CPU)
            return null;
        Tensor? noise = null;
        if (dropping)
            using (no_grad()) noise = empty_like(x).bernoulli_(1 - _dropout).div_(1 - _dropout);   // (..., in), libtorch's _dropout_impl
        if (!is_grad_enabled() || !(x.requires_grad || lora_A.weight!.requires_grad || lora_B.weight!.requires_grad))
        {
            // No graph to build: the same arithmetic, straight.
            var y = functional.linear(x, linear.weight, linear.bias);                                   // (..., out)
            using var dropped = noise is null ? x.alias() : x.mul(noise);                                // (..., in)
            // (A xᵀ)ᵀ rather than x Aᵀ: the faster shape for libtorch's CPU product (LoraLinearFunction, Skinny).
            y.view(-1, y.shape[^1]).addmm_(lora_A.weight!.mm(dropped.reshape(-1, x.shape[^1]).t()).t(), lora_B.weight!.t(), beta: 1, alpha: (float)Scaling);
            noise?.Dispose();
            return y;
        }
        var output = LoraLinearFunction.apply(x, linear.weight, linear.bias!, lora_A.weight!, lora_B.weight!, Scaling, noise!, dropping ? _dropout : 0.0);
        noise?.Dispose();   // the node keeps its own reference for the backward; this handle would live to the end of the step
        return output;
    }

    /// <summary>s · B A on dropout(x), without a lora_B bias: a mixed batch can gather it per row.</summary>
    public override LowRankForm? LowRank =>
        lora_B.bias is null ? new LowRankForm(lora_A.weight!, lora_B.weight!, Scaling, lora_dropout is { training: true } ? _dropout : 0) : null;

    /// <summary>dW = s · B A (out × in).</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return lora_B.weight!.matmul(lora_A.weight!).mul_(Scaling).MoveToOuterDisposeScope();
    }

    public override Tensor MergedWeight(Module<Tensor, Tensor> baseLayer) => base.MergedWeight(baseLayer);

    public override void Merge(Module<Tensor, Tensor> baseLayer, Tensor mergedWeight)
    {
        base.Merge(baseLayer, mergedWeight);
        using var scope = NewDisposeScope();
        if (lora_B.bias is { } bias)
            using (no_grad()) BaseBias(baseLayer).add_(bias, alpha: Scaling);
    }

    public override void Unmerge(Module<Tensor, Tensor> baseLayer)
    {
        base.Unmerge(baseLayer);
        using var scope = NewDisposeScope();
        if (lora_B.bias is { } bias)
            using (no_grad()) BaseBias(baseLayer).add_(bias, alpha: -Scaling);
    }

    static Parameter BaseBias(Module<Tensor, Tensor> baseLayer) =>
        baseLayer.get_parameter("bias") ?? throw new NotSupportedException("lora_bias needs a base layer with a bias to merge into.");

    public override IEnumerable<(string Name, Tensor Value)> TensorsForFile(bool asPlainDelta)
    {
        if (!asPlainDelta || _initialA is null || _initialB is null)
        {
            foreach (var p in base.TensorsForFile(asPlainDelta)) yield return p;
            yield break;
        }
        // PEFT's PiSSA/OLoRA conversion: s(B A − B0 A0) = s [B, −B0] [A; A0], a rank-2r LoRA on the original W.
        yield return ("lora_A.weight", cat([lora_A.weight!.detach(), _initialA], 0));
        yield return ("lora_B.weight", cat([lora_B.weight!.detach(), -_initialB], 1));
        if (lora_B.bias is { } bias) yield return ("lora_B.bias", bias);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _initialA?.Dispose();
            _initialB?.Dispose();
            _pendingResidual?.Dispose();
        }
        base.Dispose(disposing);
    }
}

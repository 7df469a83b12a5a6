using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>
/// One bottleneck adapter at one layer (see <see cref="BottleneckConfig"/> for the papers). Sequential (Houlsby et al.
/// 2019, Eq. 1; AdapterHub's <c>Adapter.pre_forward</c> / <c>forward</c>): with h the layer output (or, with
/// <c>original_ln_before</c>, LN(h + sublayer residual)), out = [LN_after](s·W_up f([conv](W_down [LN_before](h))) + residual).
/// Parallel (He et al. 2022, Eq. 5): out = y + [LN_after](s·W_up f(W_down x)) with x the sublayer (or layer) input.
/// Tensor names follow AdapterHub: <c>adapter_down</c>, <c>adapter_up</c>, <c>adapter_norm_before</c>,
/// <c>adapter_norm_after</c>, <c>scaling</c>; <c>adapter_conv</c> for the convolution.
/// </summary>
public sealed class BottleneckAdapter : AdapterModule
{
    readonly BottleneckConfig _config;
    readonly string _path;
    readonly Module<Tensor, Tensor>? adapter_norm_before;
    readonly Module<Tensor, Tensor> adapter_down;
    readonly Conv1d? adapter_conv;
    readonly Module<Tensor, Tensor> adapter_up;
    readonly Module<Tensor, Tensor>? adapter_norm_after;
    readonly Parameter? scaling;
    readonly Dropout? _dropout;

    public BottleneckAdapter(BottleneckConfig config, string path, long inputWidth, long outputWidth, int bottleneck, PhmRule? sharedRule,
                             ScalarType dtype, Device device) : base(nameof(BottleneckAdapter))
    {
        _config = config;
        _path = path;
        InputWidth = inputWidth;
        OutputWidth = outputWidth;
        BottleneckSize = bottleneck;
        if (config.LnBefore)
        {
            adapter_norm_before = LayerNorm(inputWidth, device: device, dtype: dtype);
            register_module("adapter_norm_before", adapter_norm_before);
        }
        if (config.PhmLayer)
        {
            adapter_down = new PhmLinear(inputWidth, bottleneck, config.PhmDim, config.PhmRank, config.PhmBias, sharedRule, config.PhmInitRange, dtype, device);
            adapter_up = new PhmLinear(bottleneck, outputWidth, config.PhmDim, config.PhmRank, config.PhmBias, sharedRule, config.PhmInitRange, dtype, device);
        }
        else
        {
            adapter_down = Linear(inputWidth, bottleneck, device: device, dtype: dtype);
            adapter_up = Linear(bottleneck, outputWidth, device: device, dtype: dtype);
        }
        register_module("adapter_down", adapter_down);
        if (config.ConvKernelSize is int k)
        {
            // Depthwise over the sequence: one k-tap filter per bottleneck channel; padding keeps the length.
            using (NewDisposeScope())   // Conv1d's constructor leaves a temporary behind; its parameters outlive the scope
                adapter_conv = Conv1d(bottleneck, bottleneck, k, padding: k / 2, groups: bottleneck, device: device, dtype: dtype);
            register_module("adapter_conv", adapter_conv);
        }
        register_module("adapter_up", adapter_up);
        if (config.LnAfter)
        {
            adapter_norm_after = LayerNorm(outputWidth, device: device, dtype: dtype);
            register_module("adapter_norm_after", adapter_norm_after);
        }
        if (config.ScalingMode != BottleneckScaling.Fixed)
        {
            long[] shape = config.ScalingMode == BottleneckScaling.Channel ? [outputWidth] : [1];
            scaling = new Parameter(full(shape, config.Scaling, dtype: dtype, device: device));
            register_parameter("scaling", scaling);
        }
        if (config.Dropout > 0)
        {
            _dropout = Dropout(config.Dropout);
            register_module("dropout", _dropout);
        }
        Initialize(config.InitWeights);
    }

    public override string MethodName => _config.MethodName;

    /// <summary>The bottleneck width (shown as the rank in summaries).</summary>
    public override int? Rank => BottleneckSize;

    public int BottleneckSize { get; }

    public long InputWidth { get; }

    public long OutputWidth { get; }

    public override string CannotMergeReason =>
        $"{MethodName} puts a non-linear bottleneck after the layer (y + W_up f(W_down y)), which no change of the layer's weights reproduces.";

    void Initialize(string scheme)
    {
        using var scope = NewDisposeScope();   // in-place initialisers hand back wrappers of the parameters
        using var _ = no_grad();
        foreach (var (module, isUp) in new[] { (adapter_down, false), (adapter_up, true) })
        {
            if (module is PhmLinear phm)
            {
                phm.GlorotUniform(zeroRight: isUp && scheme == "mam_adapter");
                continue;
            }
            var linear = (Linear)module;
            switch (scheme)
            {
                case "mam_adapter":
                    if (isUp) linear.weight!.zero_();
                    else nn.init.kaiming_uniform_(linear.weight!, a: Math.Sqrt(5));
                    break;
                case "bert":
                    linear.weight!.normal_(0, 0.02);
                    break;
                default:   // houlsby: truncated N(0, 1e-2) in ±2e-2
                    nn.init.trunc_normal_(linear.weight!, mean: 0, std: 1e-2, a: -2e-2, b: 2e-2);
                    break;
            }
            linear.bias!.zero_();
        }
    }

    /// <summary>s·W_up f([conv](W_down [LN_before](h))), dropout in training: (..., in) → (..., out).</summary>
    Tensor Branch(Tensor h)
    {
        var input = adapter_norm_before?.call(h) ?? h;
        var down = adapter_down.call(input);                                             // (..., r)
        if (adapter_conv is not null)
        {
            if (down.dim() != 3)
                throw new InvalidOperationException($"'{_path}': the convolutional adapter needs (batch, sequence, features) inputs; got [{string.Join(", ", h.shape)}].");
            down = adapter_conv.call(down.transpose(1, 2)).transpose(1, 2);              // (B, T, r): conv over T
        }
        var up = adapter_up.call(Activations.Apply(_config.NonLinearity, down));         // (..., out)
        up = scaling is null ? (_config.Scaling == 1 ? up : up * _config.Scaling) : up * scaling;
        return _dropout?.call(up) ?? up;
    }

    SublayerContext Sublayer(string option) => SublayerContext.Current ?? throw new InvalidOperationException(
        $"'{_path}': {option} needs the sublayer's residual and LayerNorm, which only a model that declares its residual sublayers gives " +
        "(BERT's attention.output.dense and output.dense do). Target such a projection, or " +
        (_config.IsParallel ? "set ParallelInput = ParallelInput.LayerInput." : "set OriginalLnBefore = false."));

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        if (_config.IsParallel)
        {
            var input = _config.ParallelInput == ParallelInput.SublayerInput ? Sublayer("a parallel adapter fed the sublayer input").Residual : x;
            var branch = Branch(input);
            if (adapter_norm_after is not null) branch = adapter_norm_after.call(branch);
            return result.add_(branch);
        }

        var h = result;
        var residual = result;
        if (_config.OriginalLnBefore)
        {
            var context = Sublayer("original_ln_before");
            var added = result + context.Residual;
            if (_config.ResidualBeforeLn == ResidualSource.PostAdd) residual = added;
            h = context.LayerNorm?.call(added) ?? added;
            if (_config.ResidualBeforeLn == ResidualSource.AfterLayerNorm) residual = h;
        }
        var output = Branch(h);
        if (_config.AdapterResidualBeforeLn || adapter_norm_after is null) output = output.add_(residual);
        if (adapter_norm_after is not null)
        {
            output = adapter_norm_after.call(output);
            if (!_config.AdapterResidualBeforeLn) output = output.add_(residual);
        }
        return output;
    }

    public override Tensor Delta(Tensor x, Tensor baseOutput, Module<Tensor, Tensor> baseLayer) =>
        !_config.IsParallel && !_config.OriginalLnBefore && adapter_norm_after is null ? Branch(baseOutput) : base.Delta(x, baseOutput, baseLayer);
}

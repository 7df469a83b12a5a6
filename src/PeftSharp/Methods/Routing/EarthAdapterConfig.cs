using System.Globalization;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// Earth-Adapter (Hu et al. 2025, "Earth-Adapter: Bridge the Geospatial Domain Gaps with Mixture of Frequency
/// Adaptation", §3, following the authors' <c>earth_adapter.forward</c> / <c>decompose_fft</c>, VisionXLab/Earth-Adapter):
/// on a layer's token features h (B, T, C) the patch tokens (the [CLS] token, first, passes unchanged when
/// <see cref="ClsToken"/>) are split by a Fourier transform into a low band (a centred square of half-width
/// ⌊min(H, W)·cutoff_ratio / 2⌋ of the shifted 2-D spectrum over the H × W patch grid, or the centred interval of the
/// 1-D spectrum over the sequence when the tokens are not a square grid) and the high band (the rest), each taken back
/// with the inverse transform (orthonormal, real part), so low + high = h. Three bottleneck experts (C → dim → C,
/// ReLU) see h, low and high; a soft router w = softmax(W_r h + b) per token mixes them: h' = h + s·Σ_i w_i E_i(band_i),
/// s a learned scale (0.1 at init). Departure from the authors' code: each expert's up-projection starts at zero, so the
/// adapter starts as the identity (theirs draws it Kaiming-uniform). This library's layout (<c>peft_type</c>
/// "EARTH_ADAPTER"): <c>earth_experts.{0,1,2}.{down,up}.{weight,bias}</c>, <c>earth_router.{weight,bias}</c>,
/// <c>earth_scale</c> per module.
/// </summary>
public sealed record EarthAdapterConfig : AdapterConfig
{
    /// <summary>The experts' bottleneck width (the authors' <c>dim</c>).</summary>
    [JsonPropertyName("dim"), Option("size", "dim: the bottleneck width of each frequency expert", Min = 1, Max = 65536)]
    public int Dim { get; init; } = 16;

    /// <summary>The low band's size relative to the grid side (the authors' <c>cutoff_ratio</c>, 0.3 there for a
    /// 32 × 32 grid; 0.5 here keeps a 2 × 2 low band on the tiny ViT's 4 × 4 grid).</summary>
    [JsonPropertyName("cutoff_ratio"), Option("cutoff", "cutoff_ratio: low band half-width = floor(side * ratio / 2)", Min = 0, Max = 1, MinExclusive = true)]
    public double CutoffRatio { get; init; } = 0.5;

    /// <summary>The scale s's start value (the authors' <c>scale</c>).</summary>
    [JsonPropertyName("scale"), Option("scale", "scale: the start value of the learned output scale s", Min = -1e6, Max = 1e6)]
    public double Scale { get; init; } = 0.1;

    /// <summary>Whether token 0 is a [CLS] token that passes unchanged (ViT); false for plain sequences.</summary>
    [JsonPropertyName("cls_token"), Option("cls", "cls_token: token 0 is a [CLS] token left unchanged")]
    public bool ClsToken { get; init; } = true;

    public override string MethodName => "earth-adapter";

    public override string PeftType => "EARTH_ADAPTER";

    public override string SupportedLayerTypes => "Linear (with token outputs, B x T x C)";

    public override bool CanHold(Module module) => module is Linear;

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        return new EarthAdapter(this, weight.shape[0], weight.dtype, weight.device);
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".earth_"];

    /// <summary>
    /// The Fourier split of tokens x (B, N, C) into (low, high), low + high = x: over an H × W grid (N = H·W, tokens
    /// in row-major order) a 2-D transform with a centred square low band, else a 1-D transform over N with a centred
    /// interval. Throws when the cutoff leaves the low band empty.
    /// </summary>
    public static (Tensor Low, Tensor High) SplitFrequencies(Tensor x, double cutoffRatio)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        long side = (long)Math.Round(Math.Sqrt(n));
        bool grid = side * side == n && n > 1;
        var signal = grid ? x.permute(0, 2, 1).reshape(b, c, side, side) : x.permute(0, 2, 1);   // (B, C, H, W) or (B, C, N)
        long[] dims = grid ? [-2, -1] : [-1];
        long extent = grid ? side : n;
        long cutoff = (long)Math.Floor(extent * cutoffRatio / 2);
        if (cutoff < 1)
            throw new ArgumentOutOfRangeException(nameof(cutoffRatio), cutoffRatio,
                $"cutoff_ratio {cutoffRatio} leaves no low band on {(grid ? $"a {side} x {side} grid" : $"a sequence of {n}")}: use at least {(2.0 / extent).ToString("0.###", CultureInfo.InvariantCulture)}.");
        var spectrum = fft.fftshift(grid ? fft.fft2(signal, norm: FFTNormType.Ortho) : fft.fft_(signal, norm: FFTNormType.Ortho), dims);
        var mask = zeros(grid ? [side, side] : [n], dtype: x.dtype, device: x.device);
        long centre = extent / 2;
        if (grid) mask[TensorIndex.Slice(centre - cutoff, centre + cutoff), TensorIndex.Slice(centre - cutoff, centre + cutoff)] = 1;
        else mask[TensorIndex.Slice(centre - cutoff, centre + cutoff)] = 1;
        Tensor Back(Tensor band) =>
            (grid ? fft.ifft2(fft.ifftshift(band, dims), norm: FFTNormType.Ortho) : fft.ifft(fft.ifftshift(band, dims), norm: FFTNormType.Ortho)).real;
        var low = Back(spectrum.mul(mask));
        var high = Back(spectrum.mul(mask.neg().add(1)));
        Tensor Tokens(Tensor t) => (grid ? t.reshape(b, c, n) : t).permute(0, 2, 1).contiguous();   // (B, N, C)
        return (Tokens(low).MoveToOuterDisposeScope(), Tokens(high).MoveToOuterDisposeScope());
    }
}

/// <summary>One bottleneck expert of Earth-Adapter: up(relu(down(x))).</summary>
public sealed class FrequencyExpert : Module<Tensor, Tensor>
{
    readonly Linear down, up;

    public FrequencyExpert(long width, int dim, ScalarType dtype, Device device) : base(nameof(FrequencyExpert))
    {
        down = Linear(width, dim, device: device, dtype: dtype);
        up = Linear(dim, width, device: device, dtype: dtype);
        RegisterComponents();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        up.weight!.zero_();
        up.bias!.zero_();
    }

    public override Tensor forward(Tensor x) => up.call(functional.relu(down.call(x)));
}

/// <summary>Earth-Adapter at one layer (see <see cref="EarthAdapterConfig"/>); reports the router's weights per token
/// over the experts "original", "low", "high".</summary>
public sealed class EarthAdapter : AdapterModule, IReportsRouting
{
    static readonly IReadOnlyList<string> Bands = ["original", "low", "high"];
    readonly ModuleList<FrequencyExpert> earth_experts;
    readonly Linear earth_router;
    readonly Parameter earth_scale;
    readonly double _cutoffRatio;
    readonly bool _cls;
    Tensor? _lastWeights;

    public EarthAdapter(EarthAdapterConfig config, long width, ScalarType dtype, Device device) : base(nameof(EarthAdapter))
    {
        _cutoffRatio = config.CutoffRatio;
        _cls = config.ClsToken;
        earth_experts = new ModuleList<FrequencyExpert>(Enumerable.Range(0, 3).Select(_ => new FrequencyExpert(width, config.Dim, dtype, device)).ToArray());
        earth_router = Linear(width, 3, device: device, dtype: dtype);
        earth_scale = new Parameter(full([1], config.Scale, dtype: dtype, device: device));
        register_module("earth_experts", earth_experts);
        register_module("earth_router", earth_router);
        register_parameter("earth_scale", earth_scale);
    }

    public override string MethodName => "earth-adapter";

    public override string CannotMergeReason => "Earth-Adapter adds the output of nonlinear experts on frequency bands of the tokens; it is not a weight change.";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        if (result.dim() != 3)
            throw new ArgumentException($"Earth-Adapter at '{Layer?.Path}' splits token features over the sequence and needs outputs (B, T, C); this layer gives [{string.Join(", ", result.shape)}].");
        var tokens = _cls ? result[.., 1..] : result;                                   // (B, N, C)
        var (low, high) = EarthAdapterConfig.SplitFrequencies(tokens, _cutoffRatio);
        var weights = earth_router.call(tokens).softmax(-1);                            // (B, N, 3)
        var outputs = stack([earth_experts[0].call(tokens), earth_experts[1].call(low), earth_experts[2].call(high)], -2);   // (B, N, 3, C)
        var delta = weights.unsqueeze(-1).mul(outputs).sum(-2).mul(earth_scale);        // (B, N, C)
        _lastWeights?.Dispose();
        _lastWeights = weights.detach().clone().DetachFromDisposeScope();
        if (Context is { } context && LastRouting is { } routing) context.ReportRouting(routing);
        var adapted = tokens.add(delta);
        return _cls ? cat([result[.., ..1], adapted], 1) : adapted;
    }

    /// <summary>The router's weights of the last forward, one row per patch token (flattened over the batch, the first
    /// <see cref="MaxRoutingRows"/>), columns original / low / high.</summary>
    public RoutingLayer? LastRouting
    {
        get
        {
            if (_lastWeights is null) return null;
            double[] values;
            using (NewDisposeScope()) values = _lastWeights.reshape(-1, 3).to(ScalarType.Float64).cpu().data<double>().ToArray();
            int n = Math.Min(values.Length / 3, MaxRoutingRows);
            return new RoutingLayer(Layer?.Path ?? MethodName, Enumerable.Range(0, n).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToList(), Bands,
                Enumerable.Range(0, n).Select(i => (IReadOnlyList<double>)values.AsSpan(i * 3, 3).ToArray()).ToList());
        }
    }

    public const int MaxRoutingRows = 256;

    protected override void Dispose(bool disposing)
    {
        if (disposing) _lastWeights?.Dispose();
        base.Dispose(disposing);
    }
}

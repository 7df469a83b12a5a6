using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>
/// A NICE additive coupling block (Dinh et al. 2015, Eq. 4; MAD-X, Pfeiffer et al. 2020, Eq. 3-4), shared by the
/// places an invertible adapter acts: with x = [x1, x2] split in half along the features, forward
/// y1 = x1 + F(x2), y2 = x2 + G(y1); inverse x2 = y2 − G(y1), x1 = y1 − F(x2). F: (d − d/2 → h → d/2), G: (d/2 → h →
/// d − d/2), h = (d/2)/reduction; <c>F_up</c> and <c>G_up</c> start at 0 (identity at init).
/// </summary>
public sealed class NiceCoupling : ModelAdapter
{
    readonly Linear F_down, F_up, G_down, G_up;
    readonly string _activation;
    readonly long _half;

    public NiceCoupling(long width, double reduction, string activation, ScalarType dtype, Device device) : base(nameof(NiceCoupling))
    {
        _half = width / 2;
        long rest = width - _half;
        long hidden = Math.Max(1, (long)(_half / reduction));
        F_down = Linear(rest, hidden, device: device, dtype: dtype);
        F_up = Linear(hidden, _half, device: device, dtype: dtype);
        G_down = Linear(_half, hidden, device: device, dtype: dtype);
        G_up = Linear(hidden, rest, device: device, dtype: dtype);
        register_module("F_down", F_down);
        register_module("F_up", F_up);
        register_module("G_down", G_down);
        register_module("G_up", G_up);
        using (NewDisposeScope())   // in-place initialisers hand back wrappers of the parameters
        using (no_grad())
            foreach (var up in new[] { F_up, G_up })
            {
                up.weight!.zero_();
                up.bias!.zero_();
            }
        _activation = activation;
        Width = width;
    }

    public override string MethodName => "invertible";

    public long Width { get; }

    public override IEnumerable<(string Key, Tensor Parameter)> FileParameters() =>
        named_parameters().Select(p => (AdapterFiles.KeyPrefix + "invertible_adapter." + p.name, (Tensor)p.parameter));

    Tensor F(Tensor x) => F_up.call(Activations.Apply(_activation, F_down.call(x)));

    Tensor G(Tensor x) => G_up.call(Activations.Apply(_activation, G_down.call(x)));

    /// <summary>(..., d) → (..., d).</summary>
    public Tensor Forward(Tensor x)
    {
        var x1 = x.narrow(-1, 0, _half);
        var x2 = x.narrow(-1, _half, Width - _half);
        var y1 = x1 + F(x2);
        var y2 = x2 + G(y1);
        return cat([y1, y2], -1);
    }

    /// <summary>The exact inverse of <see cref="Forward"/>.</summary>
    public Tensor Inverse(Tensor y)
    {
        var y1 = y.narrow(-1, 0, _half);
        var y2 = y.narrow(-1, _half, Width - _half);
        var x2 = y2 - G(y1);
        var x1 = y1 - F(x2);
        return cat([x1, x2], -1);
    }
}

/// <summary>An invertible adapter's place in one layer (MAD-X, Pfeiffer et al. 2020, §3.2): the coupling on the layer's
/// output (the embeddings), or, before a tied output head, its inverse on what enters the head (see <see cref="Apply"/>). Its tensors are the shared
/// <see cref="NiceCoupling"/>'s.</summary>
public sealed class InvertibleAdapter : AdapterModule
{
    // A delegate, not a Module-typed field: TorchSharp would register the shared coupling under every layer.
    readonly Func<NiceCoupling> _coupling;

    public InvertibleAdapter(NiceCoupling coupling, bool inverse) : base(nameof(InvertibleAdapter))
    {
        _coupling = () => coupling;
        IsInverse = inverse;
    }

    public override string MethodName => "invertible";

    public bool IsInverse { get; }

    public override string CannotMergeReason => "an invertible adapter is a non-linear coupling of the features, which no change of the layer's weights reproduces.";

    /// <summary>Forward: the coupling on the layer's output. Inverse: on what enters the tied output embedding, which is
    /// the input of a Linear head, or the output of the LayerNorm that ends an MLM transform when the tied decoder is a
    /// bare product with the embedding matrix (BERT's <c>cls.predictions.transform.LayerNorm</c>; AdapterHub applies the
    /// inverse there, after the transform and right before the last embedding layer).</summary>
    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        !IsInverse ? _coupling().Forward(result)
        : baseLayer is TorchSharp.Modules.LayerNorm ? _coupling().Inverse(result)
        : baseLayer.call(_coupling().Inverse(x));
}

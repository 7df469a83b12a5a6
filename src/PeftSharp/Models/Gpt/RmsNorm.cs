using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Gpt;

/// <summary>Root-mean-square layer norm (Zhang and Sennrich 2019), as Llama's: <c>weight * x / sqrt(mean(x²) + eps)</c>,
/// computed in float32. TorchSharp 0.107 has no <c>nn.RMSNorm</c>.</summary>
public sealed class RmsNorm : Module<Tensor, Tensor>
{
    readonly double _eps;
    Parameter weight;

    public RmsNorm(int size, double eps) : base(nameof(RmsNorm))
    {
        _eps = eps;
        weight = Parameter(ones(size));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                       // (..., C) -> (..., C)
    {
        using var scope = NewDisposeScope();
        var x32 = x.to(ScalarType.Float32);
        var normed = x32 * (x32.pow(2).mean([-1], keepdim: true) + _eps).rsqrt();
        return (weight * normed.to(x.dtype)).MoveToOuterDisposeScope();
    }
}

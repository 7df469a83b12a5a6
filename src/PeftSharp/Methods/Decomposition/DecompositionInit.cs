using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>What the decomposition-initialised adapters share: checks of the target and of the rank, and the base
/// weight read in float64 on the CPU for a decomposition that does not depend on the device.</summary>
static class DecompositionInit
{
    /// <summary>The base weight (out, in) as float64 on the CPU, refused when it holds NaN or Inf (a decomposition of it
    /// would fail deep in LAPACK).</summary>
    public static Tensor Weight64(Module<Tensor, Tensor> baseLayer, string path, string method)
    {
        var weight = AdapterModule.BaseWeight(baseLayer);
        using var scope = NewDisposeScope();
        var w = weight.detach().to(ScalarType.Float64, CPU);
        if (!isfinite(w).all().item<bool>())
            throw new ArgumentException($"{method} decomposes the weight of '{path}', which holds NaN or infinite values; reload the base weights.");
        return w.MoveToOuterDisposeScope();
    }

    /// <summary>Refuses a rank above min(out, in): a decomposition of W has no more components than that.</summary>
    public static void CheckRank(int r, Tensor weight, string path, string method, string field = "r")
    {
        long max = Math.Min(weight.shape[0], weight.shape[1]);
        if (r < 1 || r > max)
            throw new ArgumentOutOfRangeException(field, r,
                $"{method}: {field} = {r} does not fit '{path}' ({weight.shape[0]}x{weight.shape[1]}), whose decomposition has {max} components; choose {field} in [1, {max}].");
    }

    /// <summary>x @ Mᵀ for a factor stored (rows, cols) as the adapters store them.</summary>
    public static Tensor Project(Tensor x, Tensor factor) => functional.linear(x, factor);
}

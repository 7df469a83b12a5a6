using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// What a model tells the adapters inside a residual sublayer's output projection: the sublayer's input (the residual
/// that is added after the projection) and the LayerNorm applied after the addition. A post-LN transformer sublayer
/// computes <c>LN(dropout(dense(h)) + residual)</c>; a model that opens a context around <c>dense</c> (BERT's
/// <c>attention.output.dense</c> and <c>output.dense</c> do) lets bottleneck adapters there follow AdapterHub's
/// placements exactly (Pfeiffer's adapter after the original residual and LayerNorm; He et al.'s parallel adapter fed
/// the sublayer input). Without a context those options are refused with a message naming the layer.
/// </summary>
public sealed class SublayerContext
{
    [ThreadStatic] static SublayerContext? _current;

    SublayerContext(Tensor residual, Module<Tensor, Tensor>? layerNorm, SublayerContext? outer)
    {
        Residual = residual;
        LayerNorm = layerNorm;
        Outer = outer;
    }

    /// <summary>The sublayer's input, added to the projection's output after it (B, T, C).</summary>
    public Tensor Residual { get; }

    /// <summary>The LayerNorm applied to projection + residual, or null when the model has none there.</summary>
    public Module<Tensor, Tensor>? LayerNorm { get; }

    SublayerContext? Outer { get; }

    /// <summary>The context of the projection being computed on this thread, or null.</summary>
    public static SublayerContext? Current => _current;

    /// <summary>Opens a context for the projection computed inside the returned scope.</summary>
    public static IDisposable Enter(Tensor residual, Module<Tensor, Tensor>? layerNorm)
    {
        var context = new SublayerContext(residual, layerNorm, _current);
        _current = context;
        return new Exit(context);
    }

    /// <summary>The same context for some rows of the batch (per-row adapters run on row subsets).</summary>
    internal IDisposable EnterRows(Tensor rowIndex) => Enter(Residual.index_select(0, rowIndex), LayerNorm);

    sealed class Exit(SublayerContext context) : IDisposable
    {
        bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            if (ReferenceEquals(_current, context)) _current = context.Outer;
        }
    }
}

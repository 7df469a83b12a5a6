using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// SPT's unstructured tuning (He et al. 2023): W' = W + ΔW where ΔW is zero except at the k sensitive entries chosen by
/// calibration. Stored sparse: <c>spt_values</c> [k] (trainable, 0 at init, so the adapter starts as the identity) and
/// <c>spt_indices</c> [k] (int64 buffer, flat row-major positions in W [out, in], ascending). ΔW = scatter(values at
/// indices) viewed as [out, in]; only the k values exist, so only the chosen entries can ever change, and merging adds
/// exactly ΔW to W.
/// </summary>
public sealed class SptSparseAdapter : WeightDeltaAdapter
{
    readonly Parameter spt_values;
    readonly Tensor spt_indices;
    readonly long _out, _in;

    /// <param name="count">k, the number of tuned entries.</param>
    /// <param name="indices">The flat positions to tune, or null when the file is about to provide them (k zeros).</param>
    /// <param name="baseWeight">The layer's weight W [out, in] (shape, dtype and device).</param>
    public SptSparseAdapter(int count, long[]? indices, Tensor baseWeight) : base(nameof(SptSparseAdapter))
    {
        (_out, _in) = (baseWeight.shape[0], baseWeight.shape[1]);
        if (indices is not null && indices.Length != count)
            throw new ArgumentException($"SPT's sparse delta was given {indices.Length} positions for {count} entries.", nameof(indices));
        if (indices is not null && indices.Any(i => i < 0 || i >= _out * _in))
            throw new ArgumentOutOfRangeException(nameof(indices), $"SPT's positions are flat indices into a {_out}×{_in} weight: 0 to {_out * _in - 1}.");
        spt_values = Parameter(zeros(count, dtype: baseWeight.dtype, device: baseWeight.device));
        spt_indices = indices is null ? zeros(count, ScalarType.Int64, baseWeight.device) : tensor(indices, ScalarType.Int64, baseWeight.device);
        register_parameter("spt_values", spt_values);
        register_buffer("spt_indices", spt_indices);
    }

    public override string MethodName => "spt";

    /// <summary>The tuned entries' values, [k].</summary>
    public Parameter Values => spt_values;

    /// <summary>The tuned entries' flat positions in W, [k].</summary>
    public Tensor Indices => spt_indices;

    /// <summary>The values train, unless there are none (a target without sensitive entries stays as it is).</summary>
    public override bool Trains(string name) => name == "spt_values" && spt_values.numel() > 0;

    /// <summary>result += x ΔWᵀ; x [..., in], result [..., out].</summary>
    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.add_(functional.linear(x, Dense(x.dtype)));

    /// <summary>ΔW [out, in]: zeros with the values at their positions.</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var _ = no_grad();
        return Dense(spt_values.dtype);
    }

    /// <summary>ΔW [out, in] as a differentiable function of the values (scatter's gradient reaches only them).</summary>
    Tensor Dense(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var flat = zeros(_out * _in, dtype: dtype, device: spt_values.device);
        return flat.scatter(0, spt_indices, spt_values.to(dtype)).view(_out, _in).MoveToOuterDisposeScope();
    }
}

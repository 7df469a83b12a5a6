using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>An adapter as a low-rank product Δy = s · B A dropout(x): <paramref name="A"/> [r, in],
/// <paramref name="B"/> [out, r] (the live parameters, so gradients reach them), <paramref name="Scaling"/> s, and the
/// dropout probability in force now (0 outside training).</summary>
public sealed record LowRankForm(Tensor A, Tensor B, double Scaling, double Dropout);

/// <summary>
/// A mixed batch through many low-rank adapters at once, as multi-LoRA servers do (S-LoRA, Sheng et al. 2023; Punica,
/// Chen et al. 2023): the base output is computed once for the whole batch by the layer; the K adapters present are
/// stacked, A as [K, R, in] and B as [K, out, R] with ranks below R = max rₖ padded with zeros (a zero component adds
/// nothing), gathered per row and applied by two batched matrix products. Autograd carries the gradients back through
/// the gather and the padding to each adapter's own A and B. Rows named "base only" (or an adapter this layer does not
/// hold) are left as the base computed them.
/// </summary>
public static class LowRankBatch
{
    /// <summary>
    /// Adds each row's adapter to <paramref name="result"/> (the base output, owned by the caller, written in place).
    /// <paramref name="x"/>: (N, ..., in); <paramref name="result"/>: (N, ..., out); <paramref name="rowNames"/>: N names;
    /// <paramref name="adapters"/>: the K distinct adapter names present with their <paramref name="forms"/>.
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor result, IReadOnlyList<string> rowNames, IReadOnlyList<string> adapters, IReadOnlyList<LowRankForm> forms)
    {
        var slot = adapters.Select((name, k) => (name, k)).ToDictionary(p => p.name, p => p.k);
        var rows = Enumerable.Range(0, rowNames.Count).Where(i => slot.ContainsKey(rowNames[i])).ToArray();
        bool allRows = rows.Length == rowNames.Count;
        var device = x.device;
        var which = tensor(rows.Select(i => (long)slot[rowNames[i]]).ToArray(), dtype: ScalarType.Int64, device: device);   // (M)
        var index = allRows ? null : tensor(rows.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64, device: device); // (M)

        long inFeatures = x.shape[^1], outFeatures = result.shape[^1], m = rows.Length;
        var input = (index is null ? x : x.index_select(0, index)).reshape(m, -1, inFeatures);        // (M, T, in)
        if (forms.Any(f => f.Dropout > 0))
        {
            // Each row's own adapter's dropout, as nn.Dropout: keep with probability 1 − p, scale the kept by 1 / (1 − p).
            var keep = tensor(forms.Select(f => 1 - f.Dropout).ToArray(), dtype: input.dtype, device: device).index_select(0, which).view(m, 1, 1);
            input = input * bernoulli(keep.expand_as(input)).div_(keep);
        }

        long rank = forms.Max(f => f.A.shape[0]);
        var a = stack(forms.Select(f => PadRows(f.A, rank)).ToList(), 0);                               // (K, R, in)
        var b = stack(forms.Select(f => PadRows(f.B.t(), rank).t()).ToList(), 0);                       // (K, out, R)
        var scaling = tensor(forms.Select(f => f.Scaling).ToArray(), dtype: input.dtype, device: device).index_select(0, which).view(m, 1, 1);

        var hidden = bmm(input, a.index_select(0, which).transpose(1, 2)).mul_(scaling);               // (M, T, R)
        var delta = bmm(hidden, b.index_select(0, which).transpose(1, 2));                              // (M, T, out)
        var rowShape = result.shape.ToArray();
        rowShape[0] = m;
        delta = delta.view(rowShape);                                                                   // (M, ..., out)
        return index is null ? result.add_(delta) : result.index_add_(0, index, delta, 1);
    }

    // Zero rows below `rank` rows.
    static Tensor PadRows(Tensor t, long rank) =>
        t.shape[0] == rank ? t : cat([t, zeros(rank - t.shape[0], t.shape[1], dtype: t.dtype, device: t.device)], 0);
}

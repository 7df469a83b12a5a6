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
/// gathered per row, A as [M, R, in] and B as [M, out, R] for the M rows that have one (ranks below R = max rₖ padded
/// with zeros: a zero component adds nothing), and applied by two batched matrix products. Autograd carries the gradients back through
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
        // The rows that have an adapter here, grouped by adapter (stable), and how many each adapter has.
        var slot = adapters.Select((name, k) => (name, k)).ToDictionary(p => p.name, p => p.k);
        var rows = Enumerable.Range(0, rowNames.Count).Where(i => slot.ContainsKey(rowNames[i])).OrderBy(i => slot[rowNames[i]]).ToArray();
        var counts = new long[adapters.Count];
        foreach (int i in rows) counts[slot[rowNames[i]]]++;
        var present = Enumerable.Range(0, adapters.Count).Where(k => counts[k] > 0).ToList();
        var device = x.device;
        var index = tensor(rows.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64, device: device);   // (M)

        long inFeatures = x.shape[^1], m = rows.Length;
        var input = x.index_select(0, index).reshape(m, -1, inFeatures);                                 // (M, T, in)
        // A per-row value of each adapter (its scale, its dropout's keep probability), in the rows' order: (M, 1, 1).
        Tensor PerRow(Func<LowRankForm, double> value) =>
            tensor(present.SelectMany(k => Enumerable.Repeat(value(forms[k]), (int)counts[k])).ToArray(), dtype: input.dtype, device: device).view(m, 1, 1);
        if (forms.Any(f => f.Dropout > 0))
        {
            // Each row's own adapter's dropout, as nn.Dropout: keep with probability 1 − p, scale the kept by 1 / (1 − p).
            var keep = PerRow(f => 1 - f.Dropout);
            input = input * bernoulli(keep.expand_as(input)).div_(keep);
        }

        // Each row's A and B, gathered: every adapter's (padded) factors repeated over its rows, one copy in all.
        long rank = forms.Max(f => f.A.shape[0]);
        var a = cat(present.Select(k => PadRows(forms[k].A, rank).unsqueeze(0).expand(counts[k], -1, -1)).ToList(), 0);          // (M, R, in)
        var b = cat(present.Select(k => PadRows(forms[k].B.t(), rank).t().unsqueeze(0).expand(counts[k], -1, -1)).ToList(), 0);  // (M, out, R)

        var hidden = bmm(input, a.transpose(1, 2)).mul_(PerRow(f => f.Scaling));                    // (M, T, R)
        var delta = bmm(hidden, b.transpose(1, 2));                                                  // (M, T, out)
        var rowShape = result.shape.ToArray();
        rowShape[0] = m;
        return result.index_add_(0, index, delta.view(rowShape), 1);                                  // (N, ..., out)
    }

    // Zero rows below `rank` rows.
    static Tensor PadRows(Tensor t, long rank) =>
        t.shape[0] == rank ? t : cat([t, zeros(rank - t.shape[0], t.shape[1], dtype: t.dtype, device: t.device)], 0);
}

using static TorchSharp.torch;

namespace PeftSharp.Data;

/// <summary>
/// A dataset prepared for batching (tokenized text, decoded images, ...), held in ordinary managed arrays. Batches are
/// cheap lists of row numbers; their tensors are made only when <see cref="Batch{TTensors}.ToTensors"/> is called, in
/// the caller's dispose scope, and belong to the caller. So a training step that calls it inside
/// <c>NewDisposeScope()</c> (as <see cref="Training.Trainer"/> does) frees the batch with the step.
/// </summary>
public abstract class BatchSource<TTensors> where TTensors : IDisposable
{
    /// <summary>Number of rows (examples) in the source.</summary>
    public abstract int Count { get; }

    /// <summary>Makes the tensors of the given rows, in that order.</summary>
    protected internal abstract TTensors MakeTensors(IReadOnlyList<int> rows, Device? device);

    /// <summary>
    /// The rows cut into batches of <paramref name="batchSize"/>: in order when <paramref name="seed"/> is null, else
    /// shuffled by a <see cref="SeededRandom"/> with that seed (pass e.g. <c>seed + epoch</c> for a new order each
    /// epoch). The last batch is smaller unless <paramref name="dropLast"/> drops it.
    /// </summary>
    public IReadOnlyList<Batch<TTensors>> Batches(int batchSize, ulong? seed = null, bool dropLast = false)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "The batch size must be at least 1.");
        int[] order = seed is ulong s ? SeededRandom.Permutation(Count, s) : Enumerable.Range(0, Count).ToArray();
        var batches = new List<Batch<TTensors>>();
        for (int start = 0; start < order.Length; start += batchSize)
        {
            int size = Math.Min(batchSize, order.Length - start);
            if (size < batchSize && dropLast) break;
            batches.Add(new Batch<TTensors>(this, order[start..(start + size)]));
        }
        return batches;
    }

    /// <summary>One batch of every row, in order (for evaluation on a small split).</summary>
    public Batch<TTensors> All() => new(this, Enumerable.Range(0, Count).ToArray());
}

/// <summary>Some rows of a <see cref="BatchSource{TTensors}"/>; <see cref="ToTensors"/> makes their tensors.</summary>
public sealed class Batch<TTensors>(BatchSource<TTensors> source, IReadOnlyList<int> rows) where TTensors : IDisposable
{
    /// <summary>The source's row numbers in this batch, in batch order.</summary>
    public IReadOnlyList<int> Rows { get; } = rows;

    public int Size => Rows.Count;

    /// <summary>New tensors for this batch on <paramref name="device"/> (default CPU). They join the current dispose
    /// scope if there is one; otherwise dispose them (they are <see cref="IDisposable"/>).</summary>
    public TTensors ToTensors(Device? device = null) => source.MakeTensors(Rows, device);
}

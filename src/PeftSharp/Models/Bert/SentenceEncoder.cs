using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Bert;

/// <summary>
/// Sentence embeddings from a BERT encoder, as sentence-transformers computes them: tokenize, encode, pool
/// (<see cref="BertPooling"/>), optionally scale to unit length. <c>PretrainedBert.MiniLM.LoadSentenceEncoder()</c> gives
/// all-MiniLM-L6-v2's embeddings.
/// </summary>
public sealed class SentenceEncoder(BertModel model, BertBatchTokenizer tokenizer, BertPooling pooling = BertPooling.Mean, bool normalize = true) : IDisposable
{
    public BertModel Model { get; } = model;

    public BertBatchTokenizer Tokenizer { get; } = tokenizer;

    public BertPooling Pooling { get; } = pooling;

    /// <summary>Whether embeddings are L2-normalised (then a dot product is the cosine similarity).</summary>
    public bool Normalize { get; } = normalize;

    /// <summary>Width of an embedding.</summary>
    public int Dimensions => Model.Config.HiddenSize;

    /// <summary>Embeddings (N, C) of <paramref name="sentences"/>, on the CPU, in the given order. Runs without gradients
    /// in eval mode, <paramref name="batchSize"/> sentences at a time, similar lengths together (less padding).</summary>
    public Tensor Encode(IReadOnlyList<string> sentences, int batchSize = 32)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batchSize must be at least 1.");
        if (sentences.Count == 0) return zeros(0, Dimensions);
        bool wasTraining = Model.training;
        Model.eval();
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var device = Model.parameters().First().device;
            var order = Enumerable.Range(0, sentences.Count).OrderBy(i => sentences[i].Length).ToArray();
            var parts = new List<Tensor>();
            for (int start = 0; start < order.Length; start += batchSize)
            {
                var chunk = order.Skip(start).Take(batchSize).Select(i => sentences[i]).ToList();
                using var batch = Tokenizer.Encode(chunk, device: device);
                var hidden = Model.call(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds);   // (b, T, C)
                var pooled = Pooling.Pool(Model, hidden, batch.AttentionMask);                       // (b, C)
                parts.Add(Normalize ? nn.functional.normalize(pooled, p: 2, dim: 1) : pooled);
            }
            var sorted = cat(parts, 0);                                                              // (N, C) in length order
            var inverse = new long[order.Length];
            for (int i = 0; i < order.Length; i++) inverse[order[i]] = i;
            return sorted.index_select(0, tensor(inverse, device: device)).cpu().MoveToOuterDisposeScope();
        }
        finally
        {
            Model.train(wasTraining);
        }
    }

    /// <summary><see cref="Encode(IReadOnlyList{string}, int)"/> as arrays, one per sentence.</summary>
    public float[][] EncodeToArrays(IReadOnlyList<string> sentences, int batchSize = 32)
    {
        using var embeddings = Encode(sentences, batchSize);
        var flat = embeddings.data<float>().ToArray();
        return Enumerable.Range(0, sentences.Count).Select(i => flat.AsSpan(i * Dimensions, Dimensions).ToArray()).ToArray();
    }

    public void Dispose() => Model.Dispose();
}

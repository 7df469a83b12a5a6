using Microsoft.ML.Tokenizers;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Bert;

/// <summary>A tokenized batch, padded to its longest row: three (B, T) int64 tensors, as BERT's forward takes them.</summary>
public sealed class BertBatch(Tensor inputIds, Tensor attentionMask, Tensor tokenTypeIds) : IDisposable
{
    /// <summary>Token ids (B, T), [CLS] first, [SEP] last, [PAD] after.</summary>
    public Tensor InputIds { get; } = inputIds;

    /// <summary>1 for tokens, 0 for padding (B, T).</summary>
    public Tensor AttentionMask { get; } = attentionMask;

    /// <summary>0 for the first text (with [CLS] and its [SEP]), 1 for the second of a pair (B, T).</summary>
    public Tensor TokenTypeIds { get; } = tokenTypeIds;

    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        TokenTypeIds.Dispose();
    }
}

/// <summary>
/// Turns texts into <see cref="BertBatch"/>es with Microsoft.ML.Tokenizers' WordPiece <see cref="BertTokenizer"/>, the
/// way Hugging Face's BERT tokenizers do: [CLS] text [SEP] (or [CLS] a [SEP] b [SEP] for pairs), truncation to
/// <see cref="MaxLength"/> tokens (for pairs, the longer text loses tokens first), padding with [PAD] to the batch's
/// longest row, an attention mask and token type ids.
/// </summary>
public sealed class BertBatchTokenizer
{
    public BertBatchTokenizer(BertTokenizer tokenizer, int maxLength = 512)
    {
        if (maxLength < 3) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "maxLength must leave room for [CLS], a token and [SEP] (at least 3).");
        Tokenizer = tokenizer;
        MaxLength = maxLength;
    }

    /// <summary>A tokenizer for a WordPiece <c>vocab.txt</c> (one token per line). <paramref name="lowerCase"/> for
    /// uncased models, which also strip accents, as Hugging Face's uncased BERT tokenizers do.</summary>
    public static BertBatchTokenizer FromVocabulary(Stream vocabulary, bool lowerCase = true, int maxLength = 512) =>
        new(BertTokenizer.Create(vocabulary, new BertOptions
        {
            LowerCaseBeforeTokenization = lowerCase,
            RemoveNonSpacingMarks = lowerCase,
            IndividuallyTokenizeCjk = true,
            ApplyBasicTokenization = true,
        }), maxLength);

    /// <summary>The underlying Microsoft.ML.Tokenizers tokenizer.</summary>
    public BertTokenizer Tokenizer { get; }

    /// <summary>The most tokens in a row, special tokens included.</summary>
    public int MaxLength { get; }

    /// <summary>Token ids of one text with [CLS] and [SEP] (or of a pair), truncated to <see cref="MaxLength"/>.</summary>
    public IReadOnlyList<int> EncodeToIds(string text, string? pair = null) => Row(text, pair).Ids;

    /// <summary>The WordPiece tokens of <paramref name="text"/>, without special tokens or truncation
    /// (e.g. "unaffable" → <c>una</c>, <c>##ffa</c>, <c>##ble</c>).</summary>
    public IReadOnlyList<string> Tokenize(string text) => Tokenizer.EncodeToTokens(text, out _).Select(t => t.Value).ToList();

    /// <summary>Tokenizes, truncates and pads <paramref name="texts"/> (and, for text pairs, <paramref name="pairs"/>,
    /// one per text) into a batch on <paramref name="device"/> (default CPU).</summary>
    public BertBatch Encode(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs = null, Device? device = null)
    {
        if (texts.Count == 0) throw new ArgumentException("Give at least one text to encode.", nameof(texts));
        if (pairs is not null && pairs.Count != texts.Count)
            throw new ArgumentException($"pairs has {pairs.Count} texts; it needs one per text ({texts.Count}).", nameof(pairs));
        var rows = texts.Select((t, i) => Row(t, pairs?[i])).ToList();
        int length = rows.Max(r => r.Ids.Count);
        var ids = new long[rows.Count * length];
        var mask = new long[rows.Count * length];
        var types = new long[rows.Count * length];
        Array.Fill(ids, Tokenizer.PaddingTokenId);
        for (int r = 0; r < rows.Count; r++)
            for (int i = 0; i < rows[r].Ids.Count; i++)
            {
                ids[r * length + i] = rows[r].Ids[i];
                mask[r * length + i] = 1;
                types[r * length + i] = rows[r].Types[i];
            }
        long[] shape = [rows.Count, length];
        return new BertBatch(tensor(ids, shape, device: device), tensor(mask, shape, device: device), tensor(types, shape, device: device));
    }

    (IReadOnlyList<int> Ids, IReadOnlyList<int> Types) Row(string text, string? pair)
    {
        ArgumentNullException.ThrowIfNull(text);
        var first = Tokenizer.EncodeToIds(text, addSpecialTokens: false).ToList();
        if (pair is null)
        {
            if (first.Count > MaxLength - 2) first.RemoveRange(MaxLength - 2, first.Count - (MaxLength - 2));
            return (Tokenizer.BuildInputsWithSpecialTokens(first), Enumerable.Repeat(0, first.Count + 2).ToList());
        }
        var second = Tokenizer.EncodeToIds(pair, addSpecialTokens: false).ToList();
        while (first.Count + second.Count > MaxLength - 3)   // Hugging Face's "longest_first"
        {
            var longer = first.Count >= second.Count ? first : second;
            longer.RemoveAt(longer.Count - 1);
        }
        return (Tokenizer.BuildInputsWithSpecialTokens(first, second), Tokenizer.CreateTokenTypeIdsFromSequences(first, second));
    }
}

using Microsoft.Data.Analysis;
using static TorchSharp.torch;

namespace PeftSharp.Data;

/// <summary>Padding of token sequences into (B, T) tensors.</summary>
static class Padding
{
    /// <summary>Rows of <paramref name="sequences"/> padded with <paramref name="pad"/> to the longest (or to
    /// <paramref name="length"/>); with <paramref name="mask"/>, also the attention mask.</summary>
    public static Tensor Pad(IReadOnlyList<int> rows, IReadOnlyList<int[]> sequences, long pad, int? length, Device? device, out Tensor? mask, bool withMask = true)
    {
        int t = length ?? Math.Max(1, rows.Select(r => sequences[r].Length).DefaultIfEmpty(1).Max());
        var ids = new long[rows.Count * t];
        var ones = withMask ? new long[rows.Count * t] : null;
        for (int b = 0; b < rows.Count; b++)
        {
            var sequence = sequences[rows[b]];
            for (int i = 0; i < t; i++)
            {
                bool real = i < sequence.Length;
                ids[b * t + i] = real ? sequence[i] : pad;
                if (ones is not null) ones[b * t + i] = real ? 1 : 0;
            }
        }
        mask = ones is null ? null : tensor(ones, [rows.Count, t], ScalarType.Int64, device);
        return tensor(ids, [rows.Count, t], ScalarType.Int64, device);
    }
}

/// <summary>
/// Texts with one label each (sentiment, Brown genres), tokenized once: every text becomes
/// <c>Prefix + Encode(text) + Suffix</c>, cut to <see cref="MaxLength"/> ids (the suffix is kept). A batch is padded to
/// its longest sequence (or to <see cref="MaxLength"/> with <c>padToMaxLength</c>).
/// </summary>
public sealed class TextClassificationSet : BatchSource<TokenTensors>
{
    readonly int[][] _ids;
    readonly long[] _labels;
    readonly int _padId;
    readonly bool _padToMax;

    TextClassificationSet(int[][] ids, long[] labels, int padId, int maxLength, bool padToMax, int truncated)
    {
        (_ids, _labels, _padId, MaxLength, _padToMax, TruncatedCount) = (ids, labels, padId, maxLength, padToMax, truncated);
    }

    public int MaxLength { get; }

    /// <summary>How many texts were longer than <see cref="MaxLength"/> and were cut.</summary>
    public int TruncatedCount { get; }

    public override int Count => _ids.Length;

    /// <summary>The token ids of row <paramref name="row"/>, special tokens included.</summary>
    public IReadOnlyList<int> Ids(int row) => _ids[row];

    public long Label(int row) => _labels[row];

    /// <summary>Tokenizes column <paramref name="textColumn"/> of <paramref name="frame"/> with labels from
    /// <paramref name="labelColumn"/> (checked to lie in 0 .. <paramref name="classes"/> - 1 when given).</summary>
    public static TextClassificationSet Create(DataFrame frame, ITokenEncoder encoder, int maxLength = 128, string textColumn = "Text",
                                               string labelColumn = "Label", int? classes = null, bool padToMaxLength = false)
    {
        ArgumentNullException.ThrowIfNull(encoder);
        int room = maxLength - encoder.Prefix.Count - encoder.Suffix.Count;
        if (room < 1) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, $"maxLength must leave room for at least one token besides the {encoder.Prefix.Count + encoder.Suffix.Count} special ones.");
        var texts = FrameColumns.Strings(frame, textColumn, nameof(textColumn));
        var labels = FrameColumns.Labels(frame, labelColumn, classes, nameof(labelColumn));
        int truncated = 0;
        var ids = texts.Select(text =>
        {
            var body = encoder.Encode(text);
            if (body.Count > room) truncated++;
            int[] row = [.. encoder.Prefix, .. body.Take(room), .. encoder.Suffix];
            return row;
        }).ToArray();
        return new TextClassificationSet(ids, labels, encoder.PadId, maxLength, padToMaxLength, truncated);
    }

    protected internal override TokenTensors MakeTensors(IReadOnlyList<int> rows, Device? device)
    {
        var ids = Padding.Pad(rows, _ids, _padId, _padToMax ? MaxLength : null, device, out var mask);
        var labels = tensor(rows.Select(r => _labels[r]).ToArray(), ScalarType.Int64, device);
        return new TokenTensors(ids, mask!, labels);
    }
}

/// <summary>
/// Pre-split words with one tag each (Brown part-of-speech), for token classification. Every word is encoded on its
/// own; its first token carries the word's label and the rest carry <see cref="IgnoreIndex"/>, as do special tokens
/// and padding (PyTorch's <c>cross_entropy</c> skips -100 by default). Sequences are cut to <see cref="MaxLength"/>.
/// </summary>
public sealed class TokenClassificationSet : BatchSource<TokenTensors>
{
    /// <summary>The label of positions that take no loss (PyTorch's default <c>ignore_index</c>).</summary>
    public const long IgnoreIndex = -100;

    readonly int[][] _ids;
    readonly int[][] _labels;
    readonly int _padId;

    TokenClassificationSet(int[][] ids, int[][] labels, int padId, int maxLength, int truncated)
    {
        (_ids, _labels, _padId, MaxLength, TruncatedCount) = (ids, labels, padId, maxLength, truncated);
    }

    public int MaxLength { get; }

    /// <summary>How many rows lost words to <see cref="MaxLength"/>.</summary>
    public int TruncatedCount { get; }

    public override int Count => _ids.Length;

    public IReadOnlyList<int> Ids(int row) => _ids[row];

    /// <summary>The label of each token id of row <paramref name="row"/> (<see cref="IgnoreIndex"/> where none).</summary>
    public IReadOnlyList<int> TokenLabels(int row) => _labels[row];

    /// <summary>Encodes the space-separated words of <paramref name="wordsColumn"/> with the space-separated tags of
    /// <paramref name="tagsColumn"/>, mapped to ids by <paramref name="labels"/>.</summary>
    public static TokenClassificationSet Create(DataFrame frame, ITokenEncoder encoder, LabelSet labels, int maxLength = 128,
                                                string wordsColumn = "Tokens", string tagsColumn = "UniversalTags")
    {
        ArgumentNullException.ThrowIfNull(encoder);
        ArgumentNullException.ThrowIfNull(labels);
        int room = maxLength - encoder.Prefix.Count - encoder.Suffix.Count;
        if (room < 1) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "maxLength must leave room for at least one token besides the special ones.");
        var words = FrameColumns.Strings(frame, wordsColumn, nameof(wordsColumn));
        var tags = FrameColumns.Strings(frame, tagsColumn, nameof(tagsColumn));
        var ids = new int[words.Length][];
        var tokenLabels = new int[words.Length][];
        int truncated = 0;
        for (int row = 0; row < words.Length; row++)
        {
            var w = words[row].Split(' ');
            var t = tags[row].Split(' ');
            if (w.Length != t.Length)
                throw new ArgumentException($"Row {row} has {w.Length} words but {t.Length} tags.", nameof(tagsColumn));
            var rowIds = new List<int>(encoder.Prefix);
            var rowLabels = Enumerable.Repeat((int)IgnoreIndex, encoder.Prefix.Count).ToList();
            for (int i = 0; i < w.Length; i++)
            {
                var pieces = encoder.Encode(w[i]);
                if (rowIds.Count - encoder.Prefix.Count + pieces.Count > room) { truncated++; break; }
                for (int p = 0; p < pieces.Count; p++)
                {
                    rowIds.Add(pieces[p]);
                    rowLabels.Add(p == 0 ? labels.Id(t[i]) : (int)IgnoreIndex);
                }
            }
            rowIds.AddRange(encoder.Suffix);
            rowLabels.AddRange(Enumerable.Repeat((int)IgnoreIndex, encoder.Suffix.Count));
            ids[row] = [.. rowIds];
            tokenLabels[row] = [.. rowLabels];
        }
        return new TokenClassificationSet(ids, tokenLabels, encoder.PadId, maxLength, truncated);
    }

    protected internal override TokenTensors MakeTensors(IReadOnlyList<int> rows, Device? device)
    {
        var ids = Padding.Pad(rows, _ids, _padId, null, device, out var mask);
        var labels = Padding.Pad(rows, _labels, IgnoreIndex, (int)ids.shape[1], device, out _, withMask: false);
        return new TokenTensors(ids, mask!, labels);
    }
}

/// <summary>
/// Running text for causal language modelling: every text becomes <c>Prefix + Encode(text) + Suffix</c> (give the
/// encoder an end-of-text id as suffix to mark the joins), the texts are joined into one stream of ids, and the stream
/// is cut into blocks of <see cref="BlockSize"/> + 1 ids that overlap by one. A row's <c>InputIds</c> are the first
/// <see cref="BlockSize"/> ids of its block and its <c>Labels</c> the last (the next token at every position); the
/// attention mask is all ones. The tail that does not fill a block is dropped.
/// </summary>
public sealed class LanguageModelSet : BatchSource<TokenTensors>
{
    readonly int[] _stream;

    LanguageModelSet(int[] stream, int blockSize) => (_stream, BlockSize) = (stream, blockSize);

    public int BlockSize { get; }

    /// <summary>All ids of the joined texts.</summary>
    public int TokenCount => _stream.Length;

    public override int Count => Math.Max(0, (_stream.Length - 1) / BlockSize);

    public static LanguageModelSet Create(DataFrame frame, ITokenEncoder encoder, int blockSize = 64, string textColumn = "Text")
    {
        ArgumentNullException.ThrowIfNull(encoder);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        var stream = new List<int>();
        foreach (var text in FrameColumns.Strings(frame, textColumn, nameof(textColumn)))
        {
            stream.AddRange(encoder.Prefix);
            stream.AddRange(encoder.Encode(text));
            stream.AddRange(encoder.Suffix);
        }
        var set = new LanguageModelSet([.. stream], blockSize);
        if (set.Count == 0) throw new ArgumentException($"The texts give {stream.Count} ids, fewer than one block of {blockSize} + 1.", nameof(frame));
        return set;
    }

    protected internal override TokenTensors MakeTensors(IReadOnlyList<int> rows, Device? device)
    {
        int t = BlockSize;
        var inputs = new long[rows.Count * t];
        var targets = new long[rows.Count * t];
        for (int b = 0; b < rows.Count; b++)
            for (int i = 0; i < t; i++)
            {
                inputs[b * t + i] = _stream[rows[b] * t + i];
                targets[b * t + i] = _stream[rows[b] * t + i + 1];
            }
        return new TokenTensors(tensor(inputs, [rows.Count, t], ScalarType.Int64, device), ones(rows.Count, t, ScalarType.Int64, device),
                                tensor(targets, [rows.Count, t], ScalarType.Int64, device));
    }
}

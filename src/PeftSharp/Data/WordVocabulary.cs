using System.Text;

namespace PeftSharp.Data;

/// <summary>
/// A word-level tokenizer whose vocabulary is built from training texts: lower-cased runs of letters and digits
/// (apostrophes kept inside words) and single punctuation marks, ids by falling frequency. For baselines, tests and small
/// models that need no pretrained vocabulary; a pretrained model brings its own tokenizer through <see cref="ITokenEncoder"/>.
/// Ids 0-3 are <c>[PAD]</c>, <c>[UNK]</c>, <c>[CLS]</c>, <c>[SEP]</c>.
/// </summary>
public sealed class WordVocabulary : ITokenEncoder
{
    public const int PadToken = 0, UnknownToken = 1, ClsToken = 2, SepToken = 3;

    readonly Dictionary<string, int> _ids;

    WordVocabulary(IReadOnlyList<string> words, bool addSpecialTokens)
    {
        Words = words;
        _ids = words.Select((w, i) => (w, i)).ToDictionary(p => p.w, p => p.i, StringComparer.Ordinal);
        Prefix = addSpecialTokens ? [ClsToken] : [];
        Suffix = addSpecialTokens ? [SepToken] : [];
    }

    /// <summary>Every token in id order (the four special tokens first).</summary>
    public IReadOnlyList<string> Words { get; }

    public int Count => Words.Count;

    public IReadOnlyList<int> Prefix { get; }

    public IReadOnlyList<int> Suffix { get; }

    public int PadId => PadToken;

    /// <summary>Builds the vocabulary of <paramref name="texts"/>: words seen at least <paramref name="minCount"/> times,
    /// the <paramref name="maxSize"/> most frequent at most (ties in ordinal order, so the result is deterministic).
    /// With <paramref name="addSpecialTokens"/> every sequence is wrapped in <c>[CLS]</c> ... <c>[SEP]</c>.</summary>
    public static WordVocabulary Build(IEnumerable<string> texts, int minCount = 1, int? maxSize = null, bool addSpecialTokens = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(minCount, 1);
        if (maxSize is < 5) throw new ArgumentOutOfRangeException(nameof(maxSize), maxSize, "The vocabulary needs room for the 4 special tokens and at least one word.");
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var word in Split(text))
                counts[word] = counts.GetValueOrDefault(word) + 1;
        var words = counts.Where(p => p.Value >= minCount).OrderByDescending(p => p.Value).ThenBy(p => p.Key, StringComparer.Ordinal)
                          .Select(p => p.Key).Take((maxSize ?? int.MaxValue) - 4);
        return new WordVocabulary(["[PAD]", "[UNK]", "[CLS]", "[SEP]", .. words], addSpecialTokens);
    }

    public IReadOnlyList<int> Encode(string text) => Split(text).Select(w => _ids.GetValueOrDefault(w, UnknownToken)).ToList();

    public string Decode(IEnumerable<int> ids) => string.Join(' ', ids.Select(i => i >= 0 && i < Words.Count ? Words[i] : "[UNK]"));

    /// <summary>The words of <paramref name="text"/> as this vocabulary sees them.</summary>
    public static IEnumerable<string> Split(string text)
    {
        var word = new StringBuilder();
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsLetterOrDigit(c) || (c == '\'' && word.Length > 0 && i + 1 < text.Length && char.IsLetter(text[i + 1])))
            {
                word.Append(char.ToLowerInvariant(c));
                continue;
            }
            if (word.Length > 0) { yield return word.ToString(); word.Clear(); }
            if (!char.IsWhiteSpace(c)) yield return c.ToString();
        }
        if (word.Length > 0) yield return word.ToString();
    }
}

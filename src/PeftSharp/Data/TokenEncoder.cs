namespace PeftSharp.Data;

/// <summary>
/// What the text batchers need from a tokenizer: the ids of a piece of text without special tokens, the special ids a
/// model wants around every sequence (BERT: <c>[CLS]</c> before, <c>[SEP]</c> after), and the padding id. The BERT
/// WordPiece tokenizer, a Microsoft.ML.Tokenizers tokenizer (through <see cref="TokenEncoder.Create"/>) or
/// <see cref="WordVocabulary"/> plug in here.
/// </summary>
public interface ITokenEncoder
{
    /// <summary>The ids of <paramref name="text"/>, without special tokens.</summary>
    IReadOnlyList<int> Encode(string text);

    /// <summary>Ids put before every sequence (e.g. <c>[CLS]</c>); may be empty.</summary>
    IReadOnlyList<int> Prefix { get; }

    /// <summary>Ids put after every sequence (e.g. <c>[SEP]</c>); may be empty.</summary>
    IReadOnlyList<int> Suffix { get; }

    /// <summary>The id that fills a sequence up to the batch's length (its attention mask is 0 there).</summary>
    int PadId { get; }
}

/// <summary>An <see cref="ITokenEncoder"/> made of a delegate, e.g.
/// <c>TokenEncoder.Create(t => tokenizer.EncodeToIds(t, addSpecialTokens: false), padId: 0, prefix: [101], suffix: [102])</c>.</summary>
public sealed class TokenEncoder : ITokenEncoder
{
    readonly Func<string, IReadOnlyList<int>> _encode;

    TokenEncoder(Func<string, IReadOnlyList<int>> encode, int padId, IReadOnlyList<int> prefix, IReadOnlyList<int> suffix)
    {
        _encode = encode;
        PadId = padId;
        Prefix = prefix;
        Suffix = suffix;
    }

    public static ITokenEncoder Create(Func<string, IReadOnlyList<int>> encode, int padId, IReadOnlyList<int>? prefix = null, IReadOnlyList<int>? suffix = null)
    {
        ArgumentNullException.ThrowIfNull(encode);
        return new TokenEncoder(encode, padId, prefix ?? [], suffix ?? []);
    }

    public IReadOnlyList<int> Encode(string text) => _encode(text);

    public IReadOnlyList<int> Prefix { get; }

    public IReadOnlyList<int> Suffix { get; }

    public int PadId { get; }
}

using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.Tokenizers;
using PeftSharp.Data;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// GPT-2's byte-level BPE (Microsoft.ML.Tokenizers, offline) with a compact vocabulary: only the GPT-2 tokens that
/// occur (often enough) in a training text keep an id, so the embedding of a small model stays small (GPT-2's 50,257
/// rows at width 256 would be 12.9 M parameters by themselves). Text is split exactly as GPT-2 splits it; each GPT-2 id
/// then maps to its compact id, and a GPT-2 token that was not kept is spelled with shorter kept ones (see
/// <see cref="Encode"/>), so nothing is lost on ASCII text. Id 0 is GPT-2's
/// <c>&lt;|endoftext|&gt;</c>, which joins documents in training and pads batches; id 1 is the unknown token; ids 2..
/// are the kept GPT-2 tokens in GPT-2 id order. Saved next to the model as <c>tokenizer.json</c> (the kept GPT-2 ids).
/// Decoding gives back the original text exactly unless it has characters outside printable ASCII that the training
/// text never had (those become <see cref="UnknownId"/>).
/// </summary>
public sealed class GptTokenizer : ITokenEncoder
{
    public const int EndOfTextId = 0, UnknownId = 1;

    /// <summary>Shown for <see cref="UnknownId"/> when decoding.</summary>
    public const string UnknownText = "<unk>";

    const int Gpt2EndOfText = 50256;
    const string FileName = "tokenizer.json";

    static readonly Lazy<TiktokenTokenizer> Gpt2 = new(() => TiktokenTokenizer.CreateForModel("gpt2"));

    readonly int[] _gpt2Ids;                       // compact id -> GPT-2 id (-1 for the unknown token)
    readonly Dictionary<int, int> _compact;        // GPT-2 id -> compact id

    GptTokenizer(int[] gpt2Ids)
    {
        _gpt2Ids = gpt2Ids;
        _compact = new Dictionary<int, int>(gpt2Ids.Length);
        for (int i = 0; i < gpt2Ids.Length; i++)
            if (gpt2Ids[i] >= 0) _compact[gpt2Ids[i]] = i;
    }

    /// <summary>Number of ids, special ones included: the model's <see cref="GptConfig.VocabSize"/>.</summary>
    public int VocabSize => _gpt2Ids.Length;

    /// <summary>The GPT-2 id behind each compact id (-1 for <see cref="UnknownId"/>).</summary>
    public IReadOnlyList<int> Gpt2Ids => _gpt2Ids;

    /// <summary>Keeps every GPT-2 token that occurs at least <paramref name="minCount"/> times in
    /// <paramref name="texts"/>.</summary>
    public static GptTokenizer Build(IEnumerable<string> texts, int minCount = 1)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentOutOfRangeException.ThrowIfLessThan(minCount, 1);
        var counts = new Dictionary<int, int>();
        foreach (var text in texts)
            foreach (int id in Gpt2.Value.EncodeToIds(text))
                counts[id] = counts.GetValueOrDefault(id) + 1;
        // Printable ASCII and the newline are always kept, so rarer tokens can be spelled with them.
        var characters = Enumerable.Range(32, 95).Append('\n').Select(c => Gpt2.Value.EncodeToIds(((char)c).ToString()).Single());
        var kept = counts.Where(c => c.Value >= minCount && c.Key != Gpt2EndOfText).Select(c => c.Key).Union(characters).Order();
        return new GptTokenizer([Gpt2EndOfText, -1, .. kept]);
    }

    /// <summary>The compact ids of <paramref name="text"/> (no end-of-text marks). A GPT-2 token without a compact id
    /// is spelled with kept tokens instead (greedy longest match over its text, e.g. " Fulton" as " Ful" + "ton"), so
    /// <see cref="UnknownId"/> appears only for characters that no kept token covers (the printable ASCII characters
    /// are always kept).</summary>
    public IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        foreach (int gpt2 in Gpt2.Value.EncodeToIds(text))
        {
            if (_compact.TryGetValue(gpt2, out int id)) ids.Add(id);
            else ids.AddRange(_spellings.GetOrAdd(gpt2, Spell));
        }
        return ids;
    }

    readonly System.Collections.Concurrent.ConcurrentDictionary<int, int[]> _spellings = new();

    // The text of a GPT-2 token as kept tokens: at each position the longest piece that GPT-2 encodes as one kept token.
    int[] Spell(int gpt2Id)
    {
        string text = Gpt2.Value.Decode([gpt2Id]);
        var pieces = new List<int>();
        for (int i = 0; i < text.Length;)
        {
            int taken = 0;
            for (int j = text.Length; j > i && taken == 0; j--)
            {
                var single = Gpt2.Value.EncodeToIds(text[i..j]);
                if (single.Count == 1 && _compact.TryGetValue(single[0], out int id)) { pieces.Add(id); taken = j - i; }
            }
            if (taken == 0) { pieces.Add(UnknownId); taken = 1; }
            i += taken;
        }
        return [.. pieces];
    }

    /// <summary>The text of <paramref name="ids"/>; <see cref="UnknownId"/> shows as <see cref="UnknownText"/> and
    /// <see cref="EndOfTextId"/> as a blank line.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var text = new System.Text.StringBuilder();
        var run = new List<int>();
        void Flush() { if (run.Count > 0) text.Append(Gpt2.Value.Decode(run)); run.Clear(); }
        foreach (int id in ids)
        {
            if (id < 0 || id >= _gpt2Ids.Length)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is outside this tokenizer's vocabulary 0..{_gpt2Ids.Length - 1}.");
            if (id == UnknownId) { Flush(); text.Append(UnknownText); }
            else if (id == EndOfTextId) { Flush(); text.Append("\n\n"); }
            else run.Add(_gpt2Ids[id]);
        }
        Flush();
        return text.ToString();
    }

    /// <summary>The text of one id (<see cref="Decode"/> of a single id).</summary>
    public string Token(int id) => Decode([id]);

    // ITokenEncoder: documents are joined with end-of-text marks; padding uses it too.
    IReadOnlyList<int> ITokenEncoder.Prefix => [];

    IReadOnlyList<int> ITokenEncoder.Suffix => [EndOfTextId];

    int ITokenEncoder.PadId => EndOfTextId;

    sealed record TokenizerFile(
        [property: JsonPropertyName("base")] string Base,
        [property: JsonPropertyName("description")] string Description,
        [property: JsonPropertyName("gpt2_ids")] int[] Gpt2Ids);

    /// <summary>Writes <c>tokenizer.json</c> into <paramref name="directory"/>.</summary>
    public void Save(string directory)
    {
        var file = new TokenizerFile("gpt2",
            "GPT-2 byte-level BPE (Microsoft.ML.Tokenizers TiktokenTokenizer.CreateForModel(\"gpt2\")) with a compact vocabulary: " +
            "compact id i stands for GPT-2 id gpt2_ids[i]; -1 is the unknown token; 50256 is <|endoftext|>.", _gpt2Ids);
        IO.AtomicFile.WriteAllText(Path.Combine(directory, FileName), JsonSerializer.Serialize(file));
    }

    /// <summary>Reads the <c>tokenizer.json</c> of <paramref name="directory"/>.</summary>
    public static GptTokenizer Load(string directory)
    {
        string path = Path.Combine(directory, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"No {FileName} in {directory}; a GPT checkpoint folder holds config.json, model.safetensors and {FileName}.", path);
        TokenizerFile? file;
        try { file = JsonSerializer.Deserialize<TokenizerFile>(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path} is not a valid tokenizer file ({e.Message})."); }
        if (file is null || file.Base != "gpt2" || file.Gpt2Ids is not { Length: >= 2 } ids || ids[EndOfTextId] != Gpt2EndOfText || ids[UnknownId] != -1)
            throw new InvalidDataException($"{path} is not a compact GPT-2 vocabulary (expected base \"gpt2\" and gpt2_ids starting [50256, -1, ...]).");
        if (ids.Skip(2).Any(i => i < 0 || i >= Gpt2EndOfText) || ids.Skip(2).Distinct().Count() != ids.Length - 2)
            throw new InvalidDataException($"{path}: gpt2_ids must be distinct GPT-2 ids in 0..{Gpt2EndOfText - 1} after the two special ones.");
        return new GptTokenizer(ids);
    }
}

using System.Text;

namespace PeftSharp.Data;

/// <summary>
/// Helpers for the Brown corpus: its part-of-speech tags mapped onto the 12 universal tags of Petrov, Das and McDonald
/// (2012), and its tokens joined back into readable text.
/// </summary>
public static class BrownCorpus
{
    /// <summary>The 12 universal part-of-speech tags, in label-id order.</summary>
    public static LabelSet UniversalTags { get; } = new(["NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X"]);

    // Base Brown tags (lower case, after the rules in ToUniversal) -> universal tag. Our own table, close to but not the
    // same as NLTK's en-brown.map (which e.g. sends ABL/ABN to PRT); data/brown/README.md lists the differences.
    static readonly Dictionary<string, string> Map = Build(
        (".", ". , : ( ) -- `` '' '"),
        ("NOUN", "nn nns np nps nr nrs nc"),
        ("VERB", "vb vbd vbg vbn vbz be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md"),
        ("ADJ", "jj jjr jjs jjt od ap"),
        ("ADV", "rb rbr rbt rn ql qlp abl wql wrb *"),
        ("PRON", "pn pp ppl ppls ppo pps ppss wp wpo wps"),
        ("DET", "at dt dti dts dtx abn abx wdt ex"),
        ("ADP", "in cs"),
        ("CONJ", "cc"),
        ("NUM", "cd"),
        ("PRT", "to rp"),
        ("X", "uh nil fw"));

    static Dictionary<string, string> Build(params (string Tag, string Brown)[] rows)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (tag, brown) in rows)
            foreach (var b in brown.Split(' ', StringSplitOptions.RemoveEmptyEntries)) map.Add(b, tag);
        return map;
    }

    /// <summary>
    /// The universal tag of a Brown tag: the title, headline and cited-word suffixes (<c>-tl</c>, <c>-hl</c>, <c>-nc</c>)
    /// are dropped; a foreign word (<c>fw-...</c>) is <c>X</c>; a contraction (<c>ppss+bem</c>) takes its first part;
    /// the negation mark (<c>md*</c>) and the possessive mark (<c>nn$</c>, <c>pp$$</c>) are dropped; <c>*</c> alone
    /// ("not") is an adverb.
    /// </summary>
    public static string ToUniversal(string brownTag)
    {
        if (Known.TryGetValue(brownTag, out var known)) return known;
        if (!TryToUniversal(brownTag, out var tag))
            throw new ArgumentException($"'{brownTag}' is not a Brown corpus tag this mapping knows.", nameof(brownTag));
        Known.TryAdd(brownTag, tag);
        return tag;
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> Known = new(StringComparer.Ordinal);

    public static bool TryToUniversal(string brownTag, out string universal)
    {
        string t = brownTag.ToLowerInvariant();
        foreach (var suffix in new[] { "-tl", "-hl", "-nc" })
            t = t.Replace(suffix, "", StringComparison.Ordinal);
        if (t.StartsWith("fw-", StringComparison.Ordinal)) t = "fw";
        int plus = t.IndexOf('+');
        if (plus > 0) t = t[..plus];
        if (t != "*") t = t.TrimEnd('*');
        if (t.Length > 1) t = t.TrimEnd('$');
        if (Map.TryGetValue(t, out var found)) { universal = found; return true; }
        universal = "X";
        return false;
    }

    static readonly HashSet<string> NoSpaceBefore = [".", ",", ";", ":", "?", "!", ")", "''", "%"];
    static readonly HashSet<string> NoSpaceAfter = ["``", "(", "$"];

    /// <summary>Joins Brown tokens into text: no space before closing punctuation or after an opening bracket, and the
    /// corpus's <c>``</c> / <c>''</c> quote tokens become <c>"</c>.</summary>
    public static string Detokenize(IEnumerable<string> tokens)
    {
        var text = new StringBuilder();
        bool glue = true;
        foreach (var token in tokens)
        {
            if (!glue && !NoSpaceBefore.Contains(token)) text.Append(' ');
            text.Append(token is "``" or "''" ? "\"" : token);
            glue = NoSpaceAfter.Contains(token);
        }
        return text.ToString();
    }
}

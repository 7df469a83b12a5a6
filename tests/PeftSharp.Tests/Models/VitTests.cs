using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models.Vit;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public sealed class VitTests
{
    static readonly VitConfig Small = new() { HiddenSize = 16, Layers = 2, Heads = 2, IntermediateSize = 32 };

    static VitForImageClassification NewModel(VitConfig? config = null)
    {
        manual_seed(0);
        var model = new VitForImageClassification(config ?? Small);
        model.eval();
        return model;
    }

    [Fact]
    public void The_module_paths_are_those_of_a_Hugging_Face_ViT_classifier()
    {
        var keys = NewModel(Small with { Layers = 1 }).state_dict().Keys.ToList();
        Assert.Equal([
            "vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
            "vit.embeddings.patch_embeddings.projection.weight", "vit.embeddings.patch_embeddings.projection.bias",
            "vit.encoder.layer.0.attention.attention.query.weight", "vit.encoder.layer.0.attention.attention.query.bias",
            "vit.encoder.layer.0.attention.attention.key.weight", "vit.encoder.layer.0.attention.attention.key.bias",
            "vit.encoder.layer.0.attention.attention.value.weight", "vit.encoder.layer.0.attention.attention.value.bias",
            "vit.encoder.layer.0.attention.output.dense.weight", "vit.encoder.layer.0.attention.output.dense.bias",
            "vit.encoder.layer.0.intermediate.dense.weight", "vit.encoder.layer.0.intermediate.dense.bias",
            "vit.encoder.layer.0.output.dense.weight", "vit.encoder.layer.0.output.dense.bias",
            "vit.encoder.layer.0.layernorm_before.weight", "vit.encoder.layer.0.layernorm_before.bias",
            "vit.encoder.layer.0.layernorm_after.weight", "vit.encoder.layer.0.layernorm_after.bias",
            "vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"], keys);
    }

    [Fact]
    public void The_patch_projection_computes_what_a_strided_convolution_with_the_reshaped_weight_computes()
    {
        using var scope = NewDisposeScope();
        var model = NewModel();
        var images = rand(3, 1, 28, 28);
        var state = model.state_dict();
        var weight = state["vit.embeddings.patch_embeddings.projection.weight"].view(Small.HiddenSize, 1, 7, 7);
        var bias = state["vit.embeddings.patch_embeddings.projection.bias"];
        using var _ = no_grad();
        var convolved = nn.functional.conv2d(images, weight, bias, strides: [7, 7]).flatten(2).transpose(1, 2);   // (B, 16, C), HF's layout
        var patches = ModuleSurgery.Get(model, "vit.embeddings.patch_embeddings") as nn.Module<Tensor, Tensor>;
        Tensors.AssertClose(convolved, patches!.call(images), 1e-5, "patch embeddings");
    }

    [Fact]
    public void LoRA_on_query_and_value_attaches_to_exactly_those_projections()
    {
        var peft = PeftModel.Create(NewModel(), new LoraConfig { TargetModules = ["query", "value"], R = 2 });
        Assert.Equal([
            "vit.encoder.layer.0.attention.attention.query", "vit.encoder.layer.0.attention.attention.value",
            "vit.encoder.layer.1.attention.attention.query", "vit.encoder.layer.1.attention.attention.value"], peft.Layers.Select(l => l.Path).ToList());
    }

    [Fact]
    public void All_linear_skips_the_classifier()
    {
        var selection = PeftModel.PreviewTargets(NewModel(), new LoraConfig { TargetModules = TargetModules.AllLinear });
        Assert.Contains("vit.embeddings.patch_embeddings.projection", selection.Matched);
        Assert.DoesNotContain("classifier", selection.Matched);
        Assert.Equal(1 + 2 * 6, selection.Matched.Count);
    }

    [Fact]
    public void Replacing_the_classifier_gives_a_fresh_head_with_the_new_number_of_classes()
    {
        using var scope = NewDisposeScope();
        var model = NewModel();
        var old = model.state_dict()["classifier.weight"].clone();
        model.ReplaceClassifier(3);
        using var _ = no_grad();
        Assert.Equal([2, 3], model.call(rand(2, 1, 28, 28)).shape);
        Assert.Equal([3, Small.HiddenSize], model.state_dict()["classifier.weight"].shape);
        Assert.Equal(3, model.Config.Labels);
        Assert.Equal("classifier.bias", model.state_dict().Keys.Last());
        Assert.False(Tensors.Same(old[..3], model.state_dict()["classifier.weight"]));
    }

    [Fact]
    public void Images_of_the_wrong_shape_are_refused_with_the_expected_shape()
    {
        using var scope = NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => NewModel().call(rand(2, 28, 28)));
        Assert.Contains("(batch, 1, 28, 28)", e.Message);
    }

    [Fact]
    public void Saving_and_loading_keeps_the_config_and_the_float16_weights()
    {
        using var scope = NewDisposeScope();
        var model = NewModel(Small with { Labels = 4 });
        var directory = TempDirectory.Create();
        PretrainedVit.Save(model, directory);
        var loaded = PretrainedVit.Load(directory);
        Assert.Equal(model.Config, loaded.Config);
        var state = loaded.state_dict();
        foreach (var (name, value) in model.state_dict())
            Tensors.AssertClose(value.to(ScalarType.Float16).to(ScalarType.Float32), state[name], 0, name);
    }
}

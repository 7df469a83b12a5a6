using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using static PeftSharp.Tests.PeftFixtures;

namespace PeftSharp.Tests;

/// <summary>
/// Numbers and files produced by Hugging Face PEFT 0.20.0 (Fixtures/hf-peft-0.20, see its README) against ours: the
/// same base weights and adapter tensors must give the same outputs, gradients, losses and parameter counts.
/// </summary>
public sealed class HfPeftParityTests
{
    static readonly JsonObject Case = LoadFixture("lora_mlp_s0.json");

    static (Mlp Model, PeftModel Peft) ReferenceModel()
    {
        var model = new Mlp();
        CopyBaseWeights(model, Case);
        var kwargs = Case["peft_config_kwargs"]!;
        var peft = PeftModel.Create(model, new LoraConfig
        {
            TargetModules = TargetModules.List(kwargs["target_modules"]!.AsArray().Select(t => t!.GetValue<string>())),
            R = kwargs["r"]!.GetValue<int>(),
            LoraAlpha = kwargs["lora_alpha"]!.GetValue<double>(),
        });
        using (no_grad())
            foreach (var layer in peft.Layers)
                foreach (var (name, p) in layer["default"].named_parameters())
                    p.copy_(Read(Case["adapter_state"]![AdapterFiles.KeyPrefix + layer.Path + "." + name]!));
        return (model, peft);
    }

    [Fact]
    public void Base_adapted_and_merged_outputs_match_PEFT()
    {
        var (model, peft) = ReferenceModel();
        model.eval();
        var x = Read(Case["input"]!);
        using (peft.DisableAdapters()) Tensors.AssertClose(Read(Case["base_output"]!), model.call(x), 1e-6, "base output");
        Tensors.AssertClose(Read(Case["adapted_output"]!), model.call(x), 1e-6, "adapted output");
        peft.Merge();
        Tensors.AssertClose(Read(Case["merged_output"]!), model.call(x), 1e-6, "merged output");
    }

    [Fact]
    public void Gradients_losses_and_the_trained_output_match_PEFT_over_five_SGD_steps()
    {
        var (model, peft) = ReferenceModel();
        model.train();
        var x = Read(Case["input"]!);
        var target = Read(Case["target"]!);
        var optimizer = optim.SGD(model.parameters().Where(p => p.requires_grad), Case["sgd_lr"]!.GetValue<double>());
        var losses = Case["losses"]!.AsArray().Select(l => l!.GetValue<double>()).ToArray();
        for (int step = 0; step < losses.Length; step++)
        {
            optimizer.zero_grad();
            var loss = functional.mse_loss(model.call(x), target);
            Assert.Equal(losses[step], loss.item<float>(), 1e-6);
            loss.backward();
            if (step == 0)
                foreach (var layer in peft.Layers)
                    foreach (var (name, p) in layer["default"].named_parameters())
                        Tensors.AssertClose(Read(Case["grads_step0"]![AdapterFiles.KeyPrefix + layer.Path + "." + name]!), p.grad!, 1e-6, $"gradient of {layer.Path}.{name}");
            optimizer.step();
        }
        model.eval();
        Tensors.AssertClose(Read(Case["trained_output"]!), model.call(x), 1e-6, "output after training");
    }

    [Fact]
    public void The_parameter_report_counts_what_PEFT_counts()
    {
        var (_, peft) = ReferenceModel();
        var report = peft.ParameterReport();
        Assert.Equal(Case["trainable_params"]!.GetValue<long>(), report.TrainableParameters);
        Assert.Equal(Case["all_params"]!.GetValue<long>(), report.AllParameters);
        Assert.Equal("trainable params: 448 || all params: 2,312 || trainable%: 19.3772", report.ToString());
    }

    [Fact]
    public void An_adapter_directory_written_by_PEFT_loads_with_its_tensors_in_place()
    {
        var directory = Path.Combine(FixtureDirectory, "mlp_lora");
        var model = new Mlp();
        var peft = PeftModel.Load(model, directory);
        var inFile = SafeTensors.Load(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(["lin0", "lin1"], peft.Layers.Select(l => l.Path));
        foreach (var layer in peft.Layers)
            foreach (var (name, p) in layer["default"].named_parameters())
                Tensors.AssertEqual(inFile[AdapterFiles.KeyPrefix + layer.Path + "." + name], p, $"{layer.Path}.{name}");
        var config = Assert.IsType<LoraConfig>(peft.Config("default"));
        Assert.Equal(4, config.R);
        Assert.Equal(8, config.LoraAlpha);
    }

    [Fact]
    public void An_adapter_saved_here_has_exactly_PEFTs_config_fields_and_tensor_keys()
    {
        var peftDirectory = Path.Combine(FixtureDirectory, "mlp_lora");
        var (_, peft) = ReferenceModel();
        var directory = TempDirectory.Create();
        peft.Save(directory);

        var theirs = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(peftDirectory, AdapterFiles.ConfigFileName)))!;
        var ours = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!;
        Assert.Equal(theirs.Select(p => p.Key).Order(), ours.Select(p => p.Key).Order());
        // auto_mapping names PEFT's Python class of the base model; we have none to name.
        foreach (var (key, value) in theirs.Where(p => p.Key != "auto_mapping"))
            Assert.True(JsonNode.DeepEquals(value, ours[key]), $"{key}: PEFT wrote {value?.ToJsonString()}, we wrote {ours[key]?.ToJsonString()}.");

        var theirKeys = SafeTensors.ReadHeader(Path.Combine(peftDirectory, AdapterFiles.WeightsFileName));
        var ourKeys = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(theirKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))), ourKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))));
        Assert.Equal(theirKeys.Metadata, ourKeys.Metadata);
    }
}

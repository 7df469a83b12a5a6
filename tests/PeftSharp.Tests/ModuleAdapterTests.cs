using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Bottleneck adapters and (IA)³ beyond the matrix: paper formulas, file layouts, refusals.</summary>
public sealed class ModuleAdapterTests
{
    [Fact]
    public void Compacter_has_the_parameter_count_of_the_papers_formula_plus_its_biases()
    {
        var model = MethodMatrix.Get("bert-houlsby").NewModel();
        var config = BottleneckConfig.Compacter() with { BottleneckSize = 4, PhmDim = 2 };
        var peft = PeftModel.Create(model, config);
        long adapterParameters = peft.ParameterReport().TrainableParameters;
        int phmLayers = 2 /* layers */ * 2 /* adapters per layer (Houlsby) */ * 2 /* down, up */;
        long biases = 2 * 2 * (4 + 16);   // each adapter: down bias (4) + up bias (16)
        Assert.Equal(BottleneckConfig.PaperParameterCount(phmLayers, k: 16, d: 4, n: 2) + biases, adapterParameters);
        Assert.Equal(8 + 8 * (16 + 4), BottleneckConfig.PaperParameterCount(phmLayers, 16, 4, 2));   // n³ + 4L(k + d)
    }

    [Fact]
    public void A_shared_phm_rule_is_one_tensor_saved_once()
    {
        var model = MethodMatrix.Get("bert-houlsby").NewModel();
        var peft = PeftModel.Create(model, BottleneckConfig.Compacter() with { BottleneckSize = 4, PhmDim = 2 });
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Single(tensors, t => t.Name.EndsWith("phm_rule"));
        Assert.Contains(tensors, t => t.Name == "base_model.model.phm_rule" && t.Shape.SequenceEqual(new long[] { 2, 2, 2 }));
        Assert.Contains(tensors, t => t.Name == "base_model.model.bert.encoder.layer.1.attention.output.dense.adapter_down.W_left");
    }

    [Fact]
    public void A_parallel_adapter_fed_the_sublayer_input_names_the_layer_when_the_model_gives_none()
    {
        var model = new Mlp();
        PeftModel.Create(model, new BottleneckConfig { TargetModules = ["lin1"], IsParallel = true, BottleneckSize = 4 });
        using var x = randn(2, 16);
        var error = Assert.Throws<InvalidOperationException>(() => model.call(x));
        Assert.Contains("'lin1'", error.Message);
        Assert.Contains("ParallelInput.LayerInput", error.Message);
    }

    [Fact]
    public void Pfeiffers_adapter_sees_the_sublayers_own_residual_and_layer_norm()
    {
        // With W_up = I-like weights the adapter changes the output; without the sublayer context it would fail.
        var c = MethodMatrix.Get("bert-pfeiffer");
        var model = c.NewModel();
        var peft = PeftModel.Create(model, c.Config());
        Tensors.PerturbAdapters(peft, "default", 0.5);
        using var x = c.NewInput();
        using var adapted = model.call(x);
        using (peft.DisableAdapters())
        {
            using var plain = model.call(x);
            Tensors.AssertDifferent(adapted, plain, "Pfeiffer adapter vs base");
        }
        Assert.Equal(2, peft.Layers.Count);
        Assert.All(peft.Layers, l => Assert.Matches(@"^bert\.encoder\.layer\.\d\.output\.dense$", l.Path));
    }

    [Fact]
    public void IA3_is_saved_in_PEFTs_layout()
    {
        var model = new Mlp();
        var peft = PeftModel.Create(model, new IA3Config { TargetModules = ["lin0", "lin1"], FeedforwardModules = ["lin1"] });
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(["base_model.model.lin0.ia3_l", "base_model.model.lin1.ia3_l"], tensors.Select(t => t.Name).Order().ToArray());
        Assert.Equal(new long[] { 32, 1 }, tensors.Single(t => t.Name.Contains("lin0")).Shape);   // (out, 1): output scaled
        Assert.Equal(new long[] { 1, 32 }, tensors.Single(t => t.Name.Contains("lin1")).Shape);   // (1, in): input scaled
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!.AsObject();
        Assert.Equal("IA3", json["peft_type"]!.GetValue<string>());
        Assert.Equal("lin1", json["feedforward_modules"]![0]!.GetValue<string>());
        Assert.True(json["init_ia3_weights"]!.GetValue<bool>());
        Assert.IsType<IA3Config>(AdapterInspection.Read(directory).Config);
    }

    [Fact]
    public void IA3_scales_the_output_rows_and_the_feedforward_input_columns()
    {
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new IA3Config { TargetModules = ["lin0", "lin1"], FeedforwardModules = ["lin1"] });
        using var x = randn(3, 16);
        var lin0 = peft.Layers.Single(l => l.Path == "lin0");
        var lin1 = peft.Layers.Single(l => l.Path == "lin1");
        using (no_grad())
        {
            ((IA3LinearAdapter)lin0["default"]).Scale.fill_(2);
            ((IA3LinearAdapter)lin1["default"]).Scale.fill_(0.5);
        }
        using var y0 = lin0.call(x);
        using var base0 = lin0.BaseLayer.call(x);
        Tensors.AssertClose(base0 * 2, y0, 1e-6, "l ⊙ (W x + b)");
        using var h = randn(3, 32);
        using var y1 = lin1.call(h);
        using var base1 = lin1.BaseLayer.call(h * 0.5);
        Tensors.AssertClose(base1, y1, 1e-6, "W (l ⊙ x) + b");
    }

    [Fact]
    public void A_bottleneck_config_with_a_bad_field_names_it()
    {
        Assert.Equal("ConvKernelSize", Assert.Throws<ArgumentOutOfRangeException>(() => new BottleneckConfig { TargetModules = ["q"], ConvKernelSize = 2 }.Validate()).ParamName);
        Assert.Equal("NonLinearity", Assert.Throws<ArgumentOutOfRangeException>(() => new BottleneckConfig { TargetModules = ["q"], NonLinearity = "sigmoidish" }.Validate()).ParamName);
        var model = new Mlp();
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => PeftModel.Create(model, new BottleneckConfig { TargetModules = ["lin0"], PhmLayer = true, PhmDim = 3, BottleneckSize = 4 }));
        Assert.Contains("phm_dim 3", error.Message);
    }
}

/// <summary>The MLM head the invertible language adapter is trained with.</summary>
public sealed class MaskedLanguageModelTests
{
    static PeftSharp.Models.Bert.BertForMaskedLM TinyMlm()
    {
        manual_seed(5);
        var mlm = new PeftSharp.Models.Bert.BertForMaskedLM(new PeftSharp.Models.Bert.BertModel(new PeftSharp.Models.Bert.BertConfig
        {
            VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 16,
            HiddenDropoutProb = 0, AttentionProbsDropoutProb = 0, AddPoolingLayer = false,
        }));
        mlm.eval();
        return mlm;
    }

    [Fact]
    public void The_MLM_head_has_Hugging_Face_names_and_a_decoder_tied_to_the_word_embeddings()
    {
        var mlm = TinyMlm();
        var keys = mlm.state_dict().Keys.ToList();
        Assert.Contains("cls.predictions.transform.dense.weight", keys);
        Assert.Contains("cls.predictions.transform.LayerNorm.weight", keys);
        Assert.Contains("cls.predictions.bias", keys);
        Assert.DoesNotContain(keys, k => k.Contains("decoder"));   // tied: no weight of its own
        using var ids = randint(0, 50, [2, 5], dtype: ScalarType.Int64);
        using var logits = mlm.call(ids, null, null);
        Assert.Equal(new long[] { 2, 5, 50 }, logits.shape);
    }

    [Fact]
    public void Inverted_at_the_MLM_transform_s_LayerNorm_the_inverse_acts_on_its_output_right_before_the_tied_decoder()
    {
        var mlm = TinyMlm();
        var peft = PeftModel.Create(mlm, new InvertibleAdapterConfig
        {
            TargetModules = ["embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"], InverseModules = ["cls.predictions.transform.LayerNorm"],
        });
        Tensors.PerturbAdapters(peft, "default", 0.5);
        var coupling = (NiceCoupling)peft.ModelAdapters["default"];
        var layerNorm = peft.Layers.Single(l => l.Path == "cls.predictions.transform.LayerNorm");
        using var hidden = randn(2, 5, 16);
        using var adapted = layerNorm.call(hidden);
        using (peft.DisableAdapters())
        {
            using var plain = layerNorm.call(hidden);
            using var inverted = coupling.Inverse(plain);
            Tensors.AssertClose(inverted, adapted, 1e-6, "inverse of the LayerNorm's output");
        }
    }

    [Fact]
    public void An_invertible_adapter_at_the_embeddings_and_inverted_before_the_head_is_the_identity_at_init_and_inverts_exactly()
    {
        var mlm = TinyMlm();
        using var ids = randint(0, 50, [2, 5], dtype: ScalarType.Int64);
        using var before = mlm.call(ids, null, null);
        var peft = PeftModel.Create(mlm, new InvertibleAdapterConfig
        {
            TargetModules = ["embeddings.LayerNorm", "cls.predictions.transform.dense"], InverseModules = ["cls.predictions.transform.dense"],
        });
        using var after = mlm.call(ids, null, null);
        Tensors.AssertEqual(before, after, "invertible adapter at init");
        Tensors.PerturbAdapters(peft, "default", 0.5);
        var coupling = (NiceCoupling)peft.ModelAdapters["default"];
        using var x = randn(2, 5, 16);
        using var forward = coupling.Forward(x);
        using var back = coupling.Inverse(forward);
        Tensors.AssertDifferent(x, forward, "coupling after training-like noise");
        Tensors.AssertClose(x, back, 1e-5, "inverse(forward(x))");
    }
}

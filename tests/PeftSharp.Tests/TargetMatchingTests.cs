using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>Target selection with Hugging Face PEFT's semantics (check_target_module_exists).</summary>
public sealed class TargetMatchingTests
{
    static TinyTransformer TwoLayers() => new(new TransformerOptions(16, 2, 32, 2, 8, VocabSize: 20, MaxLength: 8));

    static IReadOnlyList<string> Matched(Module model, LoraConfig config) => PeftModel.PreviewTargets(model, config).Matched;

    [Fact]
    public void A_list_matches_a_name_exactly_or_as_a_dotted_suffix()
    {
        Assert.Equal(["layers.0.attn.q", "layers.1.attn.q"], Matched(TwoLayers(), new LoraConfig { TargetModules = ["q"] }));
        Assert.Equal(["layers.1.attn.q"], Matched(TwoLayers(), new LoraConfig { TargetModules = ["layers.1.attn.q"] }));
        // "attn.q" is a dotted suffix; "tn.q" is not (the match is on whole segments).
        Assert.Equal(2, Matched(TwoLayers(), new LoraConfig { TargetModules = ["attn.q"] }).Count);
        Assert.Throws<ArgumentException>(() => Matched(TwoLayers(), new LoraConfig { TargetModules = ["tn.q"] }));
    }

    [Fact]
    public void A_string_is_a_regex_that_must_match_the_whole_path()
    {
        Assert.Equal(["layers.1.attn.q", "layers.1.attn.v"], Matched(TwoLayers(), new LoraConfig { TargetModules = TargetModules.Regex(@"layers\.1\.attn\.(q|v)") }));
        // A regex that matches only part of a path matches nothing, as with Python's re.fullmatch.
        Assert.Throws<ArgumentException>(() => Matched(TwoLayers(), new LoraConfig { TargetModules = TargetModules.Regex("attn") }));
    }

    [Fact]
    public void All_linear_takes_every_linear_layer_but_the_output_head()
    {
        var matched = Matched(TwoLayers(), new LoraConfig { TargetModules = TargetModules.AllLinear });
        Assert.Equal(12, matched.Count);
        Assert.DoesNotContain("head", matched);
        Assert.DoesNotContain(matched, p => p.Contains("embed"));
    }

    [Fact]
    public void Exclude_modules_removes_matches_by_name_or_regex()
    {
        var byName = PeftModel.PreviewTargets(TwoLayers(), new LoraConfig { TargetModules = ["q", "v"], ExcludeModules = ["layers.0.attn.v"] });
        Assert.Equal(["layers.0.attn.q", "layers.1.attn.q", "layers.1.attn.v"], byName.Matched);
        Assert.Equal(["layers.0.attn.v"], byName.Excluded);
        var byRegex = Matched(TwoLayers(), new LoraConfig { TargetModules = TargetModules.AllLinear, ExcludeModules = TargetModules.Regex(@".*\.mlp\..*") });
        Assert.Equal(8, byRegex.Count);
    }

    [Fact]
    public void Layers_to_transform_keeps_the_listed_layer_indices()
    {
        Assert.Equal(["layers.1.attn.q"], Matched(TwoLayers(), new LoraConfig { TargetModules = ["q"], LayersToTransform = [1] }));
        Assert.Equal(["layers.0.attn.q"], Matched(TwoLayers(), new LoraConfig { TargetModules = ["q"], LayersToTransform = [0], LayersPattern = ["layers"] }));
        // A pattern that names no segment of the path leaves no layer index, so nothing matches.
        Assert.Throws<ArgumentException>(() => Matched(TwoLayers(), new LoraConfig { TargetModules = ["q"], LayersToTransform = [0], LayersPattern = ["blocks"] }));
    }

    [Fact]
    public void A_target_that_matches_nothing_names_the_similar_modules()
    {
        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(TwoLayers(), new LoraConfig { TargetModules = ["qq", "fc_1"] }));
        Assert.Contains("'qq'", error.Message);
        Assert.Contains("Similar module names: ", error.Message);
        Assert.Contains("fc1", error.Message);
        Assert.Contains("q", error.Message);
    }

    [Fact]
    public void A_target_of_a_type_the_method_cannot_adapt_says_which_types_it_can()
    {
        // DoRA adapts Linear layers only; "embed" is an Embedding.
        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(TwoLayers(), new LoraConfig { TargetModules = ["embed"], UseDora = true }));
        Assert.Contains("Embedding", error.Message);
        Assert.Contains("Linear", error.Message);
    }

    [Fact]
    public void A_layer_held_in_a_field_typed_Linear_cannot_take_an_adapter_and_the_error_says_what_to_change()
    {
        var model = new SealedFieldModel();
        using var before = model.call(ones(1, 4));
        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(model, new LoraConfig { TargetModules = ["a", "b"], R = 2 }));
        Assert.Contains("Module<Tensor, Tensor>", error.Message);
        Assert.Contains("'b'", error.Message);
        // Nothing changed: 'a' (which could take an adapter) was not wrapped either.
        Assert.DoesNotContain(model.modules(), m => m is AdapterLayer);
        Tensors.AssertEqual(before, model.call(ones(1, 4)), "output after a failed attach");
    }

    [Fact]
    public void Rank_and_alpha_patterns_apply_per_module()
    {
        var config = new LoraConfig
        {
            TargetModules = ["q", "v"], R = 8, LoraAlpha = 16,
            RankPattern = new Dictionary<string, int> { [@"layers\.1\.attn\.q"] = 2, ["v"] = 4 },
            AlphaPattern = new Dictionary<string, double> { ["layers.0.attn.q"] = 1 },
        };
        Assert.Equal(8, config.RankAt("layers.0.attn.q"));
        Assert.Equal(2, config.RankAt("layers.1.attn.q"));
        Assert.Equal(4, config.RankAt("layers.0.attn.v"));
        Assert.Equal(1.0 / 8, config.ScalingAt("layers.0.attn.q"));
        Assert.Equal(16.0 / 4, config.ScalingAt("layers.1.attn.v"));
        var peft = PeftModel.Create(TwoLayers(), config);
        Assert.Equal([8, 4, 2, 4], peft.Layers.Select(l => l["default"].Rank!.Value));
    }

    [Fact]
    public void modules_to_save_must_name_modules_the_model_has()
    {
        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], ModulesToSave = ["classifier"] }));
        Assert.Contains("'classifier'", error.Message);
    }

    [Theory]
    [InlineData(0, "r")]
    [InlineData(-3, "r")]
    public void A_config_with_a_bad_rank_is_refused_naming_the_field(int rank, string field)
    {
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = rank }));
        Assert.Contains(field, error.Message);
    }

    [Fact]
    public void A_rank_larger_than_the_layer_is_accepted_as_PEFT_does_but_not_by_a_decomposition_init()
    {
        // PEFT accepts r above min(out, in): more parameters, no more expressiveness (the summary says so).
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = 64 });
        Assert.Equal(64, peft.Layers.Single()["default"].Rank);
        Assert.Contains("above min(out, in)", peft.ParameterReport().Layers.Single().Note);
        // PiSSA takes r singular triplets of W, which has at most min(out, in).
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = 64, InitLoraWeights = LoraInit.Pissa }));
        Assert.Contains("'lin0'", error.Message);
        Assert.Contains("32x16", error.Message);
    }

    [Fact]
    public void Other_bad_hyperparameters_are_refused_naming_the_field()
    {
        Assert.Contains("lora_dropout", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraConfig { TargetModules = ["q"], LoraDropout = 1.5 }.Validate()).Message);
        Assert.Contains("bias", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraConfig { TargetModules = ["q"], Bias = "some" }.Validate()).Message);
        Assert.Contains("init_lora_weights", Assert.Throws<ArgumentOutOfRangeException>(
            () => PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], InitLoraWeights = LoraInit.Parse("loftq") })).Message);
        Assert.Contains("TargetModules", Assert.Throws<ArgumentException>(() => new LoraConfig().Validate()).Message);
    }

    [Fact]
    public void Adapter_names_that_would_break_the_file_layout_are_refused()
    {
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        Assert.Throws<ArgumentException>(() => peft.AddAdapter("default", new LoraConfig { TargetModules = ["lin0"] }));
        Assert.Throws<ArgumentException>(() => peft.AddAdapter("a.b", new LoraConfig { TargetModules = ["lin0"] }));
        Assert.Throws<ArgumentException>(() => peft.AddAdapter(AdapterLayer.BaseOnly, new LoraConfig { TargetModules = ["lin0"] }));
        Assert.Contains("default", Assert.Throws<ArgumentException>(() => peft.SetActiveAdapters("nope")).Message);
    }

    sealed class SealedFieldModel : Module<Tensor, Tensor>
    {
        Module<Tensor, Tensor> a = Linear(4, 4);
        readonly TorchSharp.Modules.Linear b = Linear(4, 4);

        public SealedFieldModel() : base(nameof(SealedFieldModel)) => RegisterComponents();

        public override Tensor forward(Tensor x) => b.call(a.call(x));
    }
}

using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.Activation;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Prompt and prefix tuning on BERT: PEFT's file layout, the prefix slot order, masks with padding.</summary>
public sealed class PromptLearningTests
{
    static (TinyBert Model, PeftModel Peft) Attach(AdapterConfig config)
    {
        var model = (TinyBert)MethodMatrix.Get("bert-prompt-tuning").NewModel();
        return (model, PeftModel.Create(model, config));
    }

    [Fact]
    public void Prompt_tuning_is_saved_in_PEFTs_layout_with_the_models_sizes()
    {
        var (_, peft) = Attach(new PromptTuningConfig { NumVirtualTokens = 5 });
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        var tensor = Assert.Single(tensors);
        Assert.Equal("prompt_embeddings", tensor.Name);
        Assert.Equal(new long[] { 5, 16 }, tensor.Shape);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)))!.AsObject();
        Assert.Equal("PROMPT_TUNING", json["peft_type"]!.GetValue<string>());
        Assert.Equal(5, json["num_virtual_tokens"]!.GetValue<int>());
        Assert.Equal(16, json["token_dim"]!.GetValue<int>());
        Assert.Equal(2, json["num_layers"]!.GetValue<int>());
        Assert.Equal(2, json["num_attention_heads"]!.GetValue<int>());
        Assert.Equal(1, json["num_transformer_submodules"]!.GetValue<int>());
        Assert.Equal("RANDOM", json["prompt_tuning_init"]!.GetValue<string>());
        Assert.False(json.ContainsKey("target_modules"));
        var inspection = AdapterInspection.Read(directory);
        Assert.True(inspection.IsValid, string.Join("; ", inspection.Problems));
        Assert.Equal(80, inspection.Parameters);
    }

    [Fact]
    public void A_prefix_is_saved_as_PEFTs_past_key_values_table_key_slot_2l_value_slot_2l_plus_1()
    {
        var (_, peft) = Attach(new PrefixTuningConfig { NumVirtualTokens = 3 });
        var prefix = (PrefixEncoder)peft.ModelAdapters["default"];
        using (no_grad())
        {
            // Table (P, 2L·C) viewed as (P, 2L, H, D): fill slot s with the value s.
            var table = prefix.Table();
            table.view(3, 4, 16).copy_(arange(4, dtype: ScalarType.Float32).view(1, 4, 1).expand(3, 4, 16));
        }
        using var scope = NewDisposeScope();
        var (key, value) = prefix.KeyValues(layer: 1, batchSize: 2);
        Assert.Equal(new long[] { 2, 2, 3, 8 }, key.shape);   // (B, H, P, D)
        Assert.Equal(2f, key.mean().item<float>());
        Assert.Equal(3f, value.mean().item<float>());
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        Assert.Equal(new long[] { 3, 2 * 2 * 16 }, Assert.Single(tensors).Shape);
    }

    [Fact]
    public void A_prefix_trained_through_its_MLP_loads_as_the_table_it_produced()
    {
        var (model, peft) = Attach(new PrefixTuningConfig { NumVirtualTokens = 2, PrefixProjection = true, EncoderHiddenSize = 8 });
        using var x = randint(0, TinyBert.Vocabulary, [2, 5], dtype: ScalarType.Int64);
        using var expected = model.call(x);
        var directory = TempDirectory.Create();
        peft.Save(directory);
        var fresh = (TinyBert)MethodMatrix.Get("bert-prompt-tuning").NewModel();
        var loaded = PeftModel.Load(fresh, directory);
        Assert.DoesNotContain(loaded.ModelAdapters["default"].named_modules(), m => m.name.Length > 0);   // no MLP: the table
        using var actual = fresh.call(x);
        Tensors.AssertClose(expected, actual, 1e-6, "loaded prefix vs trained prefix");
    }

    [Fact]
    public void A_prompt_keeps_the_output_shape_and_respects_padding()
    {
        var (model, peft) = Attach(new PromptTuningConfig { NumVirtualTokens = 4 });
        using var ids = randint(1, TinyBert.Vocabulary, [2, 6], dtype: ScalarType.Int64);
        using var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 }, [2, 6]);
        using var padded = model.Bert.call(ids, mask, null);
        Assert.Equal(new long[] { 2, 6, 16 }, padded.shape);
        // Row 2 with its padding cut off gives the same first three positions: padding is not attended.
        using var shortIds = ids[1..2, ..3];
        using var alone = model.Bert.call(shortIds, null, null);
        Tensors.AssertClose(alone, padded[1..2, ..3], 1e-5, "padded row vs the same row unpadded");
        Assert.Equal(["default"], peft.ActiveAdapters);
    }

    [Fact]
    public void Prompt_configs_name_what_is_wrong()
    {
        Assert.Equal("NumVirtualTokens", Assert.Throws<ArgumentOutOfRangeException>(() => new PromptTuningConfig { NumVirtualTokens = 0 }.Validate()).ParamName);
        // TEXT needs token ids to start a new prompt (a file with TEXT still reads: a loaded prompt takes the file's values).
        new PromptTuningConfig { PromptTuningInit = PromptTuningInit.Text }.Validate();
        Assert.Equal("InitTokenIds", Assert.Throws<ArgumentException>(() => PeftModel.Create(new TinyBert(), new PromptTuningConfig { PromptTuningInit = PromptTuningInit.Text })).ParamName);
        var error = Assert.Throws<ArgumentException>(() => PeftModel.Create(new PeftSharp.Models.Mlp(), new PromptTuningConfig()));
        Assert.Contains("IPromptHost", error.Message);
    }
}

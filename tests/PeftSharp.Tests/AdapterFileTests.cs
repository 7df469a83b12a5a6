using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Adapter directories that do not fit the model, or are damaged, fail with an error naming the file, the key
/// and what was expected; the model is left exactly as it was. A save never leaves a half-written file.</summary>
public sealed class AdapterFileTests
{
    static Mlp NewMlp()
    {
        manual_seed(3);
        return new Mlp();
    }

    /// <summary>A valid adapter directory (LoRA r=4 on lin0, lin1 of the MLP) to damage.</summary>
    internal static string SavedAdapter(LoraConfig? config = null)
    {
        var peft = PeftModel.Create(NewMlp(), config ?? new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4 });
        Tensors.PerturbAdapters(peft, "default");
        var directory = TempDirectory.Create();
        peft.Save(directory);
        return directory;
    }

    static string Weights(string directory) => Path.Combine(directory, AdapterFiles.WeightsFileName);

    static string ConfigPath(string directory) => Path.Combine(directory, AdapterFiles.ConfigFileName);

    static void EditConfig(string directory, Action<JsonObject> edit)
    {
        var json = (JsonObject)JsonNode.Parse(File.ReadAllText(ConfigPath(directory)))!;
        edit(json);
        File.WriteAllText(ConfigPath(directory), json.ToJsonString());
    }

    static void RewriteTensors(string directory, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> edit)
    {
        var tensors = SafeTensors.Load(Weights(directory));
        SafeTensors.Save(Weights(directory), edit(tensors));
    }

    /// <summary>Loading fails with <typeparamref name="T"/> whose message contains every fragment, and the model's
    /// modules, parameters and output are unchanged.</summary>
    static void AssertLoadFails<T>(string directory, params string[] fragments) where T : Exception
    {
        var model = NewMlp();
        var before = Tensors.Snapshot(model);
        var keys = model.state_dict().Keys.ToList();
        var error = Assert.ThrowsAny<T>(() => PeftModel.Load(model, directory));
        foreach (var fragment in fragments) Assert.Contains(fragment, error.Message);
        Assert.Equal(keys, model.state_dict().Keys.ToList());
        foreach (var (path, p) in model.named_parameters()) Tensors.AssertEqual(before[path], p, $"{path} after a failed load");
        Assert.DoesNotContain(model.modules(), m => m is AdapterLayer or ModulesToSaveWrapper);
    }

    [Fact]
    public void A_file_missing_a_tensor_names_the_key_and_its_expected_shape()
    {
        var directory = SavedAdapter();
        RewriteTensors(directory, t => t.Where(p => !p.Key.Contains("lin1.lora_B")).ToDictionary());
        AssertLoadFails<AdapterFileException>(directory, Weights(directory), "base_model.model.lin1.lora_B.weight", "[32, 4]");
    }

    [Fact]
    public void A_tensor_of_the_wrong_shape_names_the_key_and_both_shapes()
    {
        var directory = SavedAdapter();
        EditConfig(directory, json => json["r"] = 8);
        AssertLoadFails<AdapterFileException>(directory, "base_model.model.lin0.lora_A.weight", "[4, 16]", "[8, 16]");
    }

    [Fact]
    public void A_tensor_for_a_module_the_model_does_not_have_is_refused()
    {
        var directory = SavedAdapter();
        RewriteTensors(directory, t => { t["base_model.model.encoder.lin9.lora_A.weight"] = zeros(4, 16); return t; });
        AssertLoadFails<AdapterFileException>(directory, "base_model.model.encoder.lin9.lora_A.weight", "other module names");
    }

    [Fact]
    public void A_config_for_another_method_names_the_method_and_what_is_read()
    {
        var directory = SavedAdapter();
        EditConfig(directory, json => json["peft_type"] = "BOFT");
        AssertLoadFails<AdapterConfigException>(directory, ConfigPath(directory), "'BOFT'", "LORA");
    }

    [Fact]
    public void A_config_field_of_the_wrong_type_names_the_field()
    {
        var directory = SavedAdapter();
        EditConfig(directory, json => json["r"] = "eight");
        AssertLoadFails<AdapterConfigException>(directory, "'r'", "integer", "\"eight\"");
    }

    [Fact]
    public void A_config_asking_for_an_unsupported_feature_names_it()
    {
        var directory = SavedAdapter();
        EditConfig(directory, json => json["use_qalora"] = true);
        AssertLoadFails<AdapterConfigException>(directory, "use_qalora=true");
    }

    [Fact]
    public void A_config_that_is_not_JSON_is_refused()
    {
        var directory = SavedAdapter();
        File.WriteAllText(ConfigPath(directory), "{ \"peft_type\": ");
        AssertLoadFails<AdapterConfigException>(directory, ConfigPath(directory), "not valid JSON");
    }

    [Fact]
    public void A_target_list_that_fits_no_module_of_the_model_says_so()
    {
        var directory = SavedAdapter();
        EditConfig(directory, json => json["target_modules"] = new JsonArray("query", "value"));
        AssertLoadFails<ArgumentException>(directory, "does not fit this model", "'query'");
    }

    [Fact]
    public void A_truncated_safetensors_file_is_refused()
    {
        var directory = SavedAdapter();
        var bytes = File.ReadAllBytes(Weights(directory));
        File.WriteAllBytes(Weights(directory), bytes[..(bytes.Length / 2)]);
        AssertLoadFails<SafeTensorsFormatException>(directory, Weights(directory), "truncated");
    }

    [Fact]
    public void A_corrupted_safetensors_header_is_refused()
    {
        var directory = SavedAdapter();
        var bytes = File.ReadAllBytes(Weights(directory));
        Encoding.ASCII.GetBytes("#garbage#").CopyTo(bytes, 8);
        File.WriteAllBytes(Weights(directory), bytes);
        AssertLoadFails<SafeTensorsFormatException>(directory, Weights(directory), "not valid JSON");
    }

    [Fact]
    public void A_header_that_claims_more_bytes_than_the_file_holds_is_refused()
    {
        var directory = SavedAdapter();
        var bytes = File.ReadAllBytes(Weights(directory));
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)bytes.Length * 10);
        File.WriteAllBytes(Weights(directory), bytes);
        AssertLoadFails<SafeTensorsFormatException>(directory, Weights(directory), "claims");
    }

    [Fact]
    public void A_tensor_whose_offsets_disagree_with_its_shape_is_refused()
    {
        var directory = SavedAdapter();
        var bytes = File.ReadAllBytes(Weights(directory));
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = Encoding.UTF8.GetString(bytes, 8, headerLength).Replace("\"shape\":[4,16]", "\"shape\":[4,17]");   // same length
        Encoding.UTF8.GetBytes(header).CopyTo(bytes, 8);
        File.WriteAllBytes(Weights(directory), bytes);
        AssertLoadFails<SafeTensorsFormatException>(directory, "base_model.model.lin0.lora_A.weight", "needs 272 bytes");
    }

    [Fact]
    public void A_directory_without_the_files_says_which_file_is_missing()
    {
        var empty = TempDirectory.Create();
        AssertLoadFails<FileNotFoundException>(empty, AdapterFiles.ConfigFileName);
        AssertLoadFails<DirectoryNotFoundException>(Path.Combine(empty, "nope"), "No adapter directory");
        var directory = SavedAdapter();
        File.Delete(Weights(directory));
        AssertLoadFails<FileNotFoundException>(directory, AdapterFiles.WeightsFileName);
    }

    [Fact]
    public void A_failed_load_into_a_model_with_adapters_leaves_them_as_they_were()
    {
        var model = NewMlp();
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 2 });
        var x = randn(2, 16);
        using var before = model.call(x);
        var broken = SavedAdapter();
        EditConfig(broken, json => json["r"] = 2);
        Assert.ThrowsAny<AdapterFileException>(() => peft.LoadAdapter(broken, "second"));
        Assert.Equal(["default"], peft.AdapterNames);
        Assert.Equal(["lin0"], peft.Layers.Select(l => l.Path));
        Tensors.AssertEqual(before, model.call(x), "output after a failed load");
    }

    [Fact]
    public void Adapters_other_than_default_are_saved_in_a_subfolder_named_after_them_and_load_back()
    {
        var model = NewMlp();
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 2 });
        peft.AddAdapter("french", new LoraConfig { TargetModules = ["lin1"], R = 3 });
        Tensors.PerturbAdapters(peft, "french");
        var directory = TempDirectory.Create();
        peft.Save(directory);
        Assert.True(File.Exists(Path.Combine(directory, AdapterFiles.ConfigFileName)));
        Assert.True(File.Exists(Path.Combine(directory, "french", AdapterFiles.WeightsFileName)));
        Assert.DoesNotContain(SafeTensors.ReadHeader(Path.Combine(directory, "french", AdapterFiles.WeightsFileName)).Tensors, t => t.Name.Contains("french"));

        peft.SetActiveAdapters("french");
        var x = randn(2, 16);
        using var expected = model.call(x);
        var fresh = NewMlp();
        var loaded = PeftModel.Load(fresh, Path.Combine(directory, "french"), "french");
        Tensors.AssertEqual(expected, fresh.call(x), "french adapter loaded into a fresh model");
        Assert.Equal(["french"], loaded.ActiveAdapters);
    }

    [Fact]
    public void A_save_that_fails_leaves_the_previous_files_intact_and_no_temporary_files()
    {
        var directory = SavedAdapter();
        var weights = File.ReadAllBytes(Weights(directory));
        var config = File.ReadAllText(ConfigPath(directory));

        Assert.Throws<ArgumentException>(() => SafeTensors.Save(Weights(directory), new Dictionary<string, Tensor> { ["x"] = zeros(2, dtype: ScalarType.ComplexFloat32) }));
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(ConfigPath(directory), stream =>
        {
            stream.Write(Encoding.UTF8.GetBytes("{ half"));
            throw new InvalidOperationException("disk full");
        }));

        Assert.Equal(weights, File.ReadAllBytes(Weights(directory)));
        Assert.Equal(config, File.ReadAllText(ConfigPath(directory)));
        Assert.Equal([AdapterFiles.ConfigFileName, AdapterFiles.WeightsFileName], Directory.GetFiles(directory).Select(Path.GetFileName).Order());
    }

    [Fact]
    public void Safetensors_written_here_round_trip_every_dtype_exactly()
    {
        var path = Path.Combine(TempDirectory.Create(), "t.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn(3, 4), ["f16"] = randn(5).to(ScalarType.Float16), ["bf16"] = randn(2, 2).to(ScalarType.BFloat16),
            ["f64"] = randn(2, dtype: ScalarType.Float64), ["i64"] = arange(6).reshape(2, 3), ["scalar"] = tensor(3.5f), ["empty"] = zeros(0, 4),
        };
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var loaded = SafeTensors.Load(path);
        Assert.Equal(tensors.Keys.Order(), loaded.Keys.Order());
        foreach (var (key, value) in tensors)
        {
            Assert.Equal(value.dtype, loaded[key].dtype);
            Assert.True(Tensors.Same(value, loaded[key]), key);
        }
        // The data section starts 8-byte aligned, as the reference writer makes it.
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(File.ReadAllBytes(path).AsSpan(0, 8));
        Assert.Equal(0UL, headerLength % 8);
    }

    [Fact]
    public void Inspecting_a_directory_reports_its_method_ranks_tensors_and_problems()
    {
        var directory = SavedAdapter(new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, RankPattern = new Dictionary<string, int> { ["lin1"] = 2 } });
        var inspection = AdapterInspection.Read(directory);
        Assert.True(inspection.IsValid, string.Join("; ", inspection.Problems));
        Assert.Equal("LORA", inspection.Method);
        Assert.Equal([2, 4], inspection.Ranks);
        Assert.Equal(4 * 16 + 32 * 4 + 2 * 32 + 32 * 2, inspection.Parameters);

        EditConfig(directory, json => json["rank_pattern"] = new JsonObject());
        var inconsistent = AdapterInspection.Read(directory);
        Assert.False(inconsistent.IsValid);
        Assert.Contains(inconsistent.Problems, p => p.Contains("'lin1' has rank 2"));
    }
}

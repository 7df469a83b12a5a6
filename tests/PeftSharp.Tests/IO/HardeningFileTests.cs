using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

/// <summary>Damaged and hostile adapter files found by a fault campaign: each fails with an
/// <see cref="AdapterFileException"/> naming the file, the key and what is wrong, never another exception, never a
/// hang, and the model stays as it was.</summary>
public sealed class HardeningFileTests
{
    const string LoraA = "base_model.model.lin0.lora_A.weight";

    static Mlp NewMlp()
    {
        manual_seed(3);
        return new Mlp();
    }

    static string SavedAdapter() => AdapterFileTests.SavedAdapter();

    static string Weights(string directory) => Path.Combine(directory, AdapterFiles.WeightsFileName);

    static string ConfigPath(string directory) => Path.Combine(directory, AdapterFiles.ConfigFileName);

    /// <summary>Rewrites the JSON header of a safetensors file (the data section stays as it was).</summary>
    static void EditHeader(string path, Func<string, string> edit)
    {
        var bytes = File.ReadAllBytes(path);
        int length = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = Encoding.UTF8.GetBytes(edit(Encoding.UTF8.GetString(bytes, 8, length)));
        var result = new byte[8 + header.Length + bytes.Length - 8 - length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)header.Length);
        header.CopyTo(result, 8);
        bytes.AsSpan(8 + length).CopyTo(result.AsSpan(8 + header.Length));
        File.WriteAllBytes(path, result);
    }

    static void EditEntry(string directory, string key, Action<JsonObject> edit) => EditHeader(Weights(directory), text =>
    {
        var header = (JsonObject)JsonNode.Parse(text)!;
        edit((JsonObject)header[key]!);
        return header.ToJsonString();
    });

    /// <summary>Loading fails with an <see cref="AdapterFileException"/> whose message holds every fragment, within a
    /// few seconds, and leaves the model's modules and parameters as they were.</summary>
    static AdapterFileException AssertLoadFails(string directory, params string[] fragments)
    {
        var model = NewMlp();
        var before = Tensors.Snapshot(model);
        var keys = model.state_dict().Keys.ToList();
        var load = Task.Run(() => PeftModel.Load(model, directory));
        Assert.True(Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(20))).Result == load, "the load did not finish within 20 s (blocked on a special file?)");
        var error = Assert.IsAssignableFrom<AdapterFileException>(Assert.Single(load.Exception!.InnerExceptions));
        foreach (var fragment in fragments) Assert.Contains(fragment, error.Message);
        Assert.Equal(keys, model.state_dict().Keys.ToList());
        foreach (var (path, p) in model.named_parameters()) Tensors.AssertEqual(before[path], p, $"{path} after a failed load");
        Assert.DoesNotContain(model.modules(), m => m is AdapterLayer);
        return error;
    }

    [Theory]
    [InlineData("shape", "null")]
    [InlineData("shape", "[4, null]")]
    [InlineData("shape", "[4, 1.5]")]
    [InlineData("shape", "[4, \"16\"]")]
    [InlineData("shape", "[4, 1e30]")]
    [InlineData("data_offsets", "null")]
    [InlineData("data_offsets", "[0, null]")]
    [InlineData("data_offsets", "[0]")]
    [InlineData("data_offsets", "[-8, 256]")]
    [InlineData("data_offsets", "[0, 99999999999999999999]")]
    [InlineData("dtype", "null")]
    [InlineData("dtype", "7")]
    public void A_malformed_header_field_names_the_file_the_key_and_the_field(string field, string value)
    {
        var directory = SavedAdapter();
        EditEntry(directory, LoraA, entry => entry[field] = JsonNode.Parse(value));
        AssertLoadFails(directory, Weights(directory), LoraA, field);
        var inspect = Assert.ThrowsAny<AdapterFileException>(() => AdapterInspection.Read(directory));
        Assert.Contains(LoraA, inspect.Message);
    }

    [Fact]
    public void A_huge_shape_whose_byte_count_overflows_is_refused()
    {
        var directory = SavedAdapter();
        EditEntry(directory, LoraA, entry => entry["shape"] = new JsonArray(4611686018427387904L, 4L));
        AssertLoadFails(directory, Weights(directory), LoraA, "too large");
    }

    [Fact]
    public void A_scalar_where_a_matrix_belongs_names_both_shapes()
    {
        var directory = SavedAdapter();
        EditEntry(directory, LoraA, entry =>
        {
            var begin = entry["data_offsets"]![0]!.GetValue<long>();
            entry["shape"] = new JsonArray();
            entry["data_offsets"] = new JsonArray(begin, begin + 4);
        });
        AssertLoadFails(directory, Weights(directory), LoraA, "shape []", "[4, 16]");
    }

    [Fact]
    public void A_header_key_that_is_not_UTF8_names_the_file()
    {
        var directory = SavedAdapter();
        var bytes = File.ReadAllBytes(Weights(directory));
        int at = Encoding.ASCII.GetString(bytes).IndexOf("lin0.lora_A", StringComparison.Ordinal);
        bytes[at] = 0xFF;   // one flipped byte inside a key
        File.WriteAllBytes(Weights(directory), bytes);
        AssertLoadFails(directory, Weights(directory), "UTF-8");
        Assert.Contains(Weights(directory), Assert.ThrowsAny<AdapterFileException>(() => AdapterInspection.Read(directory)).Message);
    }

    [Fact]
    public void A_header_naming_a_tensor_twice_is_refused()
    {
        var directory = SavedAdapter();
        EditHeader(Weights(directory), text =>
        {
            int at = text.IndexOf($"\"{LoraA}\"", StringComparison.Ordinal);
            int end = text.IndexOf('}', at) + 1;
            return text[..end] + "," + text[at..end] + text[end..];
        });
        AssertLoadFails(directory, Weights(directory), LoraA, "twice");
    }

    [Fact]
    public void A_header_length_over_the_cap_is_refused_before_it_is_read()
    {
        var directory = SavedAdapter();
        using (var stream = new FileStream(Weights(directory), FileMode.Open, FileAccess.ReadWrite))
        {
            stream.SetLength(SafeTensors.MaxHeaderBytes + 1_000);   // sparse: nothing is written
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)SafeTensors.MaxHeaderBytes + 8);
            stream.Write(length);
        }
        AssertLoadFails(directory, Weights(directory), "more than the");
    }

    [Fact]
    public void An_oversized_config_is_refused_before_it_is_read()
    {
        var directory = SavedAdapter();
        var config = File.ReadAllText(ConfigPath(directory));
        File.WriteAllText(ConfigPath(directory), config.TrimEnd()[..^1] + new string(' ', 1_100_000) + "}");
        Assert.Contains("more than the", Assert.Throws<AdapterFileException>(() => AdapterFiles.ReadConfig(directory)).Message);
        AssertLoadFails(directory, ConfigPath(directory), "more than the");
    }

    [DllImport("libc", EntryPoint = "mkfifo")]
    static extern int MakeFifo(string path, uint mode);

    [Fact]
    public void A_FIFO_or_a_device_in_place_of_a_file_is_refused_without_blocking()
    {
        if (!OperatingSystem.IsLinux()) return;
        var directory = SavedAdapter();
        File.Delete(ConfigPath(directory));
        Assert.Equal(0, MakeFifo(ConfigPath(directory), 0x180));
        AssertLoadFails(directory, ConfigPath(directory), "FIFO");

        var second = SavedAdapter();
        File.Delete(Weights(second));
        File.CreateSymbolicLink(Weights(second), "/dev/zero");
        AssertLoadFails(second, Weights(second), "character device");
    }

    [Fact]
    public void NaN_or_infinite_values_are_refused_unless_allowed()
    {
        foreach (var bad in new[] { float.NaN, float.PositiveInfinity })
        {
            var directory = SavedAdapter();
            var tensors = SafeTensors.Load(Weights(directory));
            tensors[LoraA][1, 2] = bad;
            SafeTensors.Save(Weights(directory), tensors);
            AssertLoadFails(directory, Weights(directory), LoraA, "NaN or infinite", "allowNonFinite");

            var model = NewMlp();
            PeftModel.Load(model, directory, allowNonFinite: true);
            var loaded = ((Methods.LowRank.LoraLinearAdapter)model.modules().OfType<AdapterLayer>().First(l => l.Path == "lin0")["default"]).A;
            Assert.Equal(bad, loaded[1, 2].item<float>());
        }
    }

    [Fact]
    public void An_integer_or_bool_tensor_is_not_cast_into_a_float_weight()
    {
        foreach (var dtype in new[] { ScalarType.Int64, ScalarType.Int32, ScalarType.Bool })
        {
            var directory = SavedAdapter();
            var tensors = SafeTensors.Load(Weights(directory));
            tensors[LoraA] = tensors[LoraA].to(dtype);
            SafeTensors.Save(Weights(directory), tensors);
            AssertLoadFails(directory, Weights(directory), LoraA, "dtype", "floating-point");
        }
    }
}

using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

/// <summary>Seeded fuzzing of saved adapter files of several methods: bit flips, truncations, header edits (null,
/// negative, huge, fractional shapes and offsets, other dtypes, missing, renamed and repeated entries, a wrong header
/// length) and NaN data. Every load either succeeds or throws an <see cref="AdapterFileException"/> naming the file;
/// after a failed load the model is exactly as it was.</summary>
public sealed class HardeningFuzzTests(ITestOutputHelper output)
{
    const int MutationsPerRow = 300;

    static readonly string[] Rows =
        ["mlp-lora", "mlp-dora", "tokens-lora-embedding", "mlp-ia3", "mlp-bottleneck-norms-learned-scale", "block-compacter", "bert-prompt-tuning"];

    [Fact]
    public void Mutated_safetensors_files_fail_only_with_AdapterFileException_and_leave_the_model_unchanged()
    {
        var random = new Random(20261202);
        int loaded = 0, refused = 0;
        var failures = new List<string>();
        foreach (var name in Rows)
        {
            var c = MethodMatrix.Get(name);
            var source = TempDirectory.Create();
            var trained = c.Attach(c.NewModel());
            Tensors.PerturbAdapters(trained, PeftModel.DefaultAdapterName);
            trained.Save(source);
            var original = File.ReadAllBytes(Path.Combine(source, AdapterFiles.WeightsFileName));

            var directory = TempDirectory.Create();
            File.Copy(Path.Combine(source, AdapterFiles.ConfigFileName), Path.Combine(directory, AdapterFiles.ConfigFileName));
            var weightsPath = Path.Combine(directory, AdapterFiles.WeightsFileName);
            var model = c.NewModel();
            var before = Tensors.Snapshot(model);
            var keys = model.state_dict().Keys.ToList();

            for (int i = 0; i < MutationsPerRow; i++)
            {
                var (what, bytes) = Mutate(original, random);
                File.WriteAllBytes(weightsPath, bytes);
                try
                {
                    using (NewDisposeScope())
                    {
                        var peft = PeftModel.Load(model, directory);
                        peft.Unload();
                    }
                    loaded++;
                }
                catch (AdapterFileException e) when (e.Message.Contains(weightsPath))
                {
                    refused++;
                }
                catch (Exception e)
                {
                    failures.Add($"{name} #{i} ({what}): {e.GetType().Name}: {e.Message}");
                    if (failures.Count > 5) break;
                }
                if (!keys.SequenceEqual(model.state_dict().Keys) || model.modules().Any(m => m is AdapterLayer)
                    || model.named_parameters().Any(p => !Tensors.Same(before[p.name], p.parameter)))
                {
                    failures.Add($"{name} #{i} ({what}): the model changed.");
                    break;
                }
            }
            foreach (var t in before.Values) t.Dispose();
        }
        output.WriteLine($"{Rows.Length * MutationsPerRow} mutated files: {refused} refused with AdapterFileException, {loaded} loaded.");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.True(refused > loaded, $"only {refused} of the mutations were refused: the fuzzer hardly reaches the checks.");
    }

    static (string What, byte[] Bytes) Mutate(byte[] original, Random random)
    {
        var bytes = (byte[])original.Clone();
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        switch (random.Next(6))
        {
            case 0:
            {
                // Mostly in the header, where the parsing is.
                int at = random.Next(3) == 0 ? random.Next(bytes.Length) : random.Next(8 + headerLength);
                int bit = random.Next(8);
                bytes[at] ^= (byte)(1 << bit);
                return ($"bit {bit} of byte {at} flipped", bytes);
            }
            case 1:
            {
                int length = random.Next(bytes.Length);
                return ($"truncated to {length} bytes", bytes[..length]);
            }
            case 2:
            {
                ulong[] lengths = [0, 1, (ulong)headerLength - 1, (ulong)headerLength + 1, (ulong)bytes.Length, ulong.MaxValue, (ulong)long.MaxValue, 1UL << 40];
                var length = lengths[random.Next(lengths.Length)];
                BinaryPrimitives.WriteUInt64LittleEndian(bytes, length);
                return ($"header length {length}", bytes);
            }
            case 3:
            {
                // NaN / Inf in the data section, 4-byte aligned (F32 data).
                int dataStart = 8 + headerLength, count = (bytes.Length - dataStart) / 4;
                if (count == 0) return ("unchanged", bytes);
                int at = dataStart + 4 * random.Next(count);
                BitConverter.GetBytes(random.Next(2) == 0 ? float.NaN : float.NegativeInfinity).CopyTo(bytes, at);
                return ($"non-finite value at byte {at}", bytes);
            }
            default:
                return EditHeader(bytes, headerLength, random);
        }
    }

    static readonly string[] Values =
    [
        "null", "[]", "[-1, 4]", "[4, -4]", "[1.5, 4]", "[\"4\", 4]", "[4611686018427387904, 4]", "[9223372036854775807]",
        "[99999999999999999999]", "[0]", "[0, 0]", "[1]", "[4, 4, 4]", "{}", "\"F32\"", "7", "true", "[null]", "[1e400]",
    ];

    static readonly string[] DTypes = ["F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X", ""];

    static (string What, byte[] Bytes) EditHeader(byte[] bytes, int headerLength, Random random)
    {
        var text = Encoding.UTF8.GetString(bytes, 8, headerLength);
        var header = (JsonObject)JsonNode.Parse(text)!;
        var names = header.Select(p => p.Key).Where(k => k != "__metadata__").ToList();
        var key = names[random.Next(names.Count)];
        var entry = (JsonObject)header[key]!;
        string what;
        switch (random.Next(7))
        {
            case 0:
            {
                var value = Values[random.Next(Values.Length)];
                var field = new[] { "shape", "data_offsets", "dtype" }[random.Next(3)];
                entry[field] = JsonNode.Parse(value);
                what = $"'{key}' {field} = {value}";
                break;
            }
            case 1:
            {
                var dtype = DTypes[random.Next(DTypes.Length)];
                entry["dtype"] = dtype;
                what = $"'{key}' dtype = {dtype}";
                break;
            }
            case 2:
            {
                // Offsets moved, stretched or swapped.
                long begin = entry["data_offsets"]![0]!.GetValue<long>(), end = entry["data_offsets"]![1]!.GetValue<long>();
                long[][] choices = [[end, begin], [begin + 4, end + 4], [begin - 4, end], [0, end - begin], [begin, end + 1 << 40], [long.MaxValue - 1, long.MaxValue]];
                var offsets = choices[random.Next(choices.Length)];
                entry["data_offsets"] = new JsonArray(offsets[0], offsets[1]);
                what = $"'{key}' data_offsets = [{offsets[0]}, {offsets[1]}]";
                break;
            }
            case 3:
                header.Remove(key);
                what = $"'{key}' removed";
                break;
            case 4:
                header.Remove(key);
                header[key + "x"] = entry;
                what = $"'{key}' renamed";
                break;
            case 5:
                header[key] = random.Next(2) == 0 ? null : "text";
                what = $"'{key}' entry replaced";
                break;
            default:
            {
                // The entry given twice (text level: a JSON object cannot hold it).
                var json = header.ToJsonString();
                var pair = $"\"{key}\":{entry.ToJsonString()}";
                var edited = json.Insert(json.Length - 1, "," + pair);
                return ($"'{key}' twice", WithHeader(bytes, headerLength, edited));
            }
        }
        return (what, WithHeader(bytes, headerLength, header.ToJsonString()));
    }

    static byte[] WithHeader(byte[] bytes, int headerLength, string header)
    {
        var headerBytes = Encoding.UTF8.GetBytes(header);
        var result = new byte[8 + headerBytes.Length + bytes.Length - 8 - headerLength];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)headerBytes.Length);
        headerBytes.CopyTo(result, 8);
        bytes.AsSpan(8 + headerLength).CopyTo(result.AsSpan(8 + headerBytes.Length));
        return result;
    }
}

using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>An invalid or unreadable safetensors file; the message names the file, the key and what was expected.</summary>
public sealed class SafeTensorsFormatException(string message) : AdapterFileException(message);

/// <summary>One entry of a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Reads and writes the safetensors format (8-byte little-endian header length, a JSON header of
/// <c>{name: {dtype, shape, data_offsets}}</c> plus optional <c>__metadata__</c>, then the raw little-endian data).
/// Every structural check is done before any tensor is made, so a bad file never yields half a result.
/// </summary>
public static class SafeTensors
{
    /// <summary>Headers larger than this are refused (the reference implementation uses 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1), ["BOOL"] = (ScalarType.Bool, 1),
    };

    /// <summary>Whether <paramref name="dtype"/> (a header's dtype name) holds floating-point values.</summary>
    public static bool IsFloatingPoint(string dtype) => dtype is "F64" or "F32" or "F16" or "BF16";

    /// <summary>Reads and validates the header of <paramref name="path"/>: entries and metadata.</summary>
    public static (IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata) ReadHeader(string path)
    {
        using var stream = OpenRead(path);
        return ReadHeader(stream, path, out _);
    }

    /// <summary>Reads every tensor in <paramref name="path"/> (on the CPU, in the file's dtype).</summary>
    public static Dictionary<string, Tensor> Load(string path)
    {
        using var stream = OpenRead(path);
        var (infos, _) = ReadHeader(stream, path, out long dataStart);
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var info in infos)
            {
                var bytes = new byte[info.End - info.Begin];
                stream.Position = dataStart + info.Begin;
                stream.ReadExactly(bytes);
                var t = empty(info.Shape, DTypes[info.DType].Type);
                t.bytes = bytes;
                result[info.Name] = t;
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (in the given order, data contiguous and in their own dtype) to
    /// <paramref name="path"/> through a temporary file and a rename, so an existing file is replaced whole or not at all.
    /// </summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        AtomicFile.Write(path, Serialize(tensors, metadata));

    /// <summary>Copies <paramref name="tensors"/> out and checks them (a dtype safetensors cannot hold throws here), and
    /// returns what writes the file to a stream: nothing touches the disk until it is called.</summary>
    public static Action<Stream> Serialize(IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var entries = tensors.ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var (name, tensor) in entries)
        {
            using var cpu = tensor.detach().cpu().contiguous();
            var dtype = DTypes.FirstOrDefault(d => d.Value.Type == cpu.dtype).Key
                ?? throw new ArgumentException($"Tensor '{name}' has dtype {cpu.dtype}, which safetensors cannot hold here.");
            var bytes = cpu.bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(cpu.shape.Select(d => (JsonNode)JsonValue.Create(d)!).ToArray()),
                ["data_offsets"] = new JsonArray(JsonValue.Create(offset), JsonValue.Create(offset + bytes.Length)),
            };
            offset += bytes.Length;
            blobs.Add(bytes);
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
        int padding = (8 - headerBytes.Length % 8) % 8;
        var padded = new byte[headerBytes.Length + padding];
        headerBytes.CopyTo(padded, 0);
        for (int i = headerBytes.Length; i < padded.Length; i++) padded[i] = (byte)' ';

        return stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded.Length);
            stream.Write(length);
            stream.Write(padded);
            foreach (var blob in blobs) stream.Write(blob);
        };
    }

    static FileStream OpenRead(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No safetensors file at {path}.", path);
        AdapterFileGuard.CheckRegularFile(path);
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
    }

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    static (IReadOnlyList<SafeTensorInfo>, IReadOnlyDictionary<string, string>) ReadHeader(Stream stream, string path, out long dataStart)
    {
        long fileLength = stream.Length;
        if (fileLength < 8)
            throw new SafeTensorsFormatException($"{path}: the file has {fileLength} bytes; a safetensors file starts with an 8-byte header length.");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8))
            throw new SafeTensorsFormatException($"{path}: the header claims {headerLength} bytes but the file holds only {fileLength - 8} after the length field (truncated or not a safetensors file).");
        if (headerLength > MaxHeaderBytes)
            throw new SafeTensorsFormatException($"{path}: the header claims {headerLength} bytes, more than the {MaxHeaderBytes} allowed.");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        try
        {
            StrictUtf8.GetCharCount(headerBytes);
        }
        catch (DecoderFallbackException)
        {
            throw new SafeTensorsFormatException($"{path}: the header is not valid UTF-8 text (a tensor name or field holds other bytes); the file is corrupted.");
        }
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(headerBytes);
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException($"{path}: the header is not valid JSON ({e.Message}); the file is corrupted or not safetensors.");
        }

        var metadata = new Dictionary<string, string>();
        var infos = new List<SafeTensorInfo>();
        using (document)
        {
            foreach (var (name, node) in Fields(path, "the header", document.RootElement))
            {
                if (name == "__metadata__")
                {
                    if (node.ValueKind == JsonValueKind.Object)
                        foreach (var (k, v) in Fields(path, "__metadata__", node))
                            metadata[k] = v.ValueKind == JsonValueKind.String ? v.GetString()! : v.GetRawText();
                    continue;
                }
                infos.Add(ParseEntry(path, name, node));
            }
        }

        // Data regions must lie inside the file and must not overlap.
        long expectedEnd = 0;
        foreach (var info in infos.OrderBy(i => i.Begin))
        {
            if (info.End > dataLength)
                throw new SafeTensorsFormatException($"{path}: tensor '{info.Name}' needs bytes {info.Begin}..{info.End} of the data section, but it holds {dataLength} (file truncated).");
            if (info.Begin < expectedEnd)
                throw new SafeTensorsFormatException($"{path}: tensor '{info.Name}' overlaps the tensor before it (data_offsets {info.Begin}..{info.End}).");
            expectedEnd = info.End;
        }
        return (infos, metadata);
    }

    // The fields of a JSON object, refusing a name given twice (JSON readers disagree on which one wins).
    static List<(string Name, JsonElement Value)> Fields(string path, string what, JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException($"{path}: {what} is {Show(element)}; expected a JSON object.");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var fields = new List<(string, JsonElement)>();
        foreach (var property in element.EnumerateObject())
        {
            if (!seen.Add(property.Name))
                throw new SafeTensorsFormatException($"{path}: {what} has the key '{property.Name}' twice; each key must appear once.");
            fields.Add((property.Name, property.Value));
        }
        return fields;
    }

    static SafeTensorInfo ParseEntry(string path, string name, JsonElement node)
    {
        if (node.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException($"{path}: header entry '{name}' is {Show(node)}; expected an object with dtype, shape and data_offsets.");
        var fields = Fields(path, $"tensor '{name}'", node).ToDictionary(f => f.Name, f => f.Value);
        if (!fields.TryGetValue("dtype", out var dtypeNode) || dtypeNode.ValueKind != JsonValueKind.String)
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has no dtype string (found {Show(dtypeNode)}); expected one of {string.Join(", ", DTypes.Keys)}.");
        var dtype = dtypeNode.GetString()!;
        if (!DTypes.TryGetValue(dtype, out var type))
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has dtype '{dtype}'; readable dtypes are {string.Join(", ", DTypes.Keys)}.");
        var shape = Integers(path, name, "shape", fields, "a list of dimensions of 0 or more, such as [4, 16]");
        if (shape.Any(d => d < 0))
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has a negative dimension in shape [{string.Join(", ", shape)}].");
        var offsets = Integers(path, name, "data_offsets", fields, "[begin, end], two byte offsets into the data section");
        if (offsets.Length != 2)
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has data_offsets [{string.Join(", ", offsets)}]; expected [begin, end].");
        long begin = offsets[0], end = offsets[1];
        if (begin < 0 || end < begin)
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has data_offsets [{begin}, {end}]; begin must be 0 or more and not after end.");
        long bytes = type.Size;
        foreach (var d in shape)
        {
            if (d != 0 && bytes > long.MaxValue / d)
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has shape [{string.Join(", ", shape)}], too large for any file.");
            bytes *= d;
        }
        if (end - begin != bytes)
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' of shape [{string.Join(", ", shape)}] and dtype {dtype} needs {bytes} bytes, but data_offsets give {end - begin}.");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    static long[] Integers(string path, string name, string field, Dictionary<string, JsonElement> fields, string expected)
    {
        if (!fields.TryGetValue(field, out var node) || node.ValueKind != JsonValueKind.Array)
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has {field} {Show(node)}; expected {expected}.");
        var values = new List<long>();
        foreach (var item in node.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long value))
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has {field} {Show(node)} holding {Show(item)}; expected {expected}.");
            values.Add(value);
        }
        return values.ToArray();
    }

    // A JSON value for a message, cut short ("missing" for an absent field).
    static string Show(JsonElement element)
    {
        if (element.ValueKind == JsonValueKind.Undefined) return "missing";
        var text = element.GetRawText();
        return text.Length <= 60 ? text : text[..57] + "...";
    }
}

/// <summary>Writes a file through a temporary sibling and a rename, so readers see the old file or the new one,
/// never a half-written one, and a failed write leaves the old file as it was.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        var temporary = Path.Combine(directory, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    public static void WriteAllText(string path, string text) =>
        Write(path, stream => stream.Write(Encoding.UTF8.GetBytes(text)));
}

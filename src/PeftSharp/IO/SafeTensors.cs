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
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
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

        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded.Length);
            stream.Write(length);
            stream.Write(padded);
            foreach (var blob in blobs) stream.Write(blob);
        });
    }

    static FileStream OpenRead(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No safetensors file at {path}.", path);
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
    }

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

        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes) as JsonObject
                ?? throw new SafeTensorsFormatException($"{path}: the header is not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException($"{path}: the header is not valid JSON ({e.Message}); the file is corrupted or not safetensors.");
        }

        var metadata = new Dictionary<string, string>();
        var infos = new List<SafeTensorInfo>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject meta)
                    foreach (var (k, v) in meta) metadata[k] = v?.ToString() ?? "";
                continue;
            }
            infos.Add(ParseEntry(path, name, node));
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

    static SafeTensorInfo ParseEntry(string path, string name, JsonNode? node)
    {
        if (node is not JsonObject entry)
            throw new SafeTensorsFormatException($"{path}: header entry '{name}' is not an object with dtype, shape and data_offsets.");
        try
        {
            var dtype = entry["dtype"]?.GetValue<string>()
                ?? throw new SafeTensorsFormatException($"{path}: tensor '{name}' has no dtype.");
            if (!DTypes.TryGetValue(dtype, out var type))
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has dtype '{dtype}'; readable dtypes are {string.Join(", ", DTypes.Keys)}.");
            var shape = (entry["shape"] as JsonArray ?? throw new SafeTensorsFormatException($"{path}: tensor '{name}' has no shape."))
                .Select(d => d!.GetValue<long>()).ToArray();
            if (shape.Any(d => d < 0))
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has a negative dimension in shape [{string.Join(", ", shape)}].");
            var offsets = entry["data_offsets"] as JsonArray;
            if (offsets is not { Count: 2 })
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' needs data_offsets [begin, end].");
            long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
            var info = new SafeTensorInfo(name, dtype, shape, begin, end);
            if (begin < 0 || end < begin)
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has data_offsets [{begin}, {end}]; begin must be 0 or more and not after end.");
            if (end - begin != info.ElementCount * type.Size)
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' of shape [{string.Join(", ", shape)}] and dtype {dtype} needs {info.ElementCount * type.Size} bytes, but data_offsets give {end - begin}.");
            return info;
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException)
        {
            throw new SafeTensorsFormatException($"{path}: header entry '{name}' is malformed ({e.Message}).");
        }
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

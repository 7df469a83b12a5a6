using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Data;

/// <summary>An array of bytes with a shape, as an IDX file holds it (MNIST's format).</summary>
public sealed record IdxArray(int[] Shape, byte[] Data)
{
    public int Count => Shape[0];

    /// <summary>Bytes per item (e.g. 784 for 28x28 images, 1 for labels).</summary>
    public int ItemSize => Shape.Skip(1).Aggregate(1, (a, b) => a * b);
}

/// <summary>
/// The file formats of <c>data/</c>: gzip-compressed JSON lines (<c>.jsonl.gz</c>, one record a line), gzip-compressed
/// CSV (<c>.csv.gz</c>, a header line, no quoting) and gzip-compressed IDX (<c>-idx3-ubyte.gz</c>, the format
/// MNIST and Fashion-MNIST are distributed in). Files are written with a fixed compression level and no timestamps, so
/// the same rows give the same bytes on the same runtime.
/// </summary>
public static class DataFiles
{
    // Missing or null fields are errors, not silent defaults.
    static readonly JsonSerializerOptions OneLine = new(DatasetMeta.JsonOptions)
    {
        WriteIndented = false, RespectRequiredConstructorParameters = true, RespectNullableAnnotations = true,
    };

    static Stream OpenGzipRead(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"The data file {path} is missing. Rebuild its dataset with `dotnet run --project src/PeftSharp.Lab -- data build {Path.GetFileName(Path.GetDirectoryName(path))}`.", path);
        return new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
    }

    static Stream OpenGzipWrite(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        return new GZipStream(File.Create(path), CompressionLevel.SmallestSize);
    }

    /// <summary>The records of a <c>.jsonl.gz</c> file, in order.</summary>
    public static IEnumerable<JsonObject> ReadJsonLines(string path) => ReadJsonLines<JsonObject>(path);

    /// <summary>The records of a <c>.jsonl.gz</c> file as <typeparamref name="T"/> (snake_case field names), in order.</summary>
    public static IEnumerable<T> ReadJsonLines<T>(string path)
    {
        using var reader = new StreamReader(OpenGzipRead(path), Encoding.UTF8);
        int line = 0;
        while (reader.ReadLine() is { } text)
        {
            line++;
            if (text.Length == 0) continue;
            T? record;
            try { record = JsonSerializer.Deserialize<T>(text, OneLine); }
            catch (JsonException e) { throw new InvalidDataException($"{path}, line {line}: not a valid record ({e.Message}). Rebuild the dataset with `dotnet run --project src/PeftSharp.Lab -- data build {Path.GetFileName(Path.GetDirectoryName(path))}`.", e); }
            yield return record ?? throw new InvalidDataException($"{path}, line {line}: not a JSON object.");
        }
    }

    public static void WriteJsonLines(string path, IEnumerable<JsonObject> records)
    {
        using var writer = new StreamWriter(OpenGzipWrite(path), new UTF8Encoding(false)) { NewLine = "\n" };
        foreach (var record in records)
            writer.WriteLine(record.ToJsonString(OneLine));
    }

    /// <summary>The header and the rows of a <c>.csv.gz</c> file (no quoting: no cell holds a comma or a line break).</summary>
    public static (string[] Header, List<string[]> Rows) ReadCsv(string path)
    {
        using var reader = new StreamReader(OpenGzipRead(path), Encoding.UTF8);
        var header = reader.ReadLine()?.Split(',') ?? throw new InvalidDataException($"{path} is empty.");
        var rows = new List<string[]>();
        while (reader.ReadLine() is { Length: > 0 } text)
        {
            var cells = text.Split(',');
            if (cells.Length != header.Length)
                throw new InvalidDataException($"{path}, line {rows.Count + 2}: {cells.Length} cells where the header has {header.Length}.");
            rows.Add(cells);
        }
        return (header, rows);
    }

    public static void WriteCsv(string path, IReadOnlyList<string> header, IEnumerable<IEnumerable<string>> rows)
    {
        using var writer = new StreamWriter(OpenGzipWrite(path), new UTF8Encoding(false)) { NewLine = "\n" };
        foreach (var row in rows.Prepend(header))
        {
            var cells = row.ToList();
            if (cells.FirstOrDefault(c => c.Contains(',') || c.Contains('\n')) is { } bad)
                throw new ArgumentException($"The cell '{bad}' holds a comma or a line break, which this CSV writer does not quote.", nameof(rows));
            writer.WriteLine(string.Join(',', cells));
        }
    }

    /// <summary>Reads an unsigned-byte IDX file, gzip-compressed (<c>.gz</c>) or not.</summary>
    public static IdxArray ReadIdx(string path)
    {
        using var stream = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? OpenGzipRead(path) : File.OpenRead(path);
        return ReadIdx(stream, path);
    }

    public static IdxArray ReadIdx(Stream stream, string name)
    {
        Span<byte> magic = stackalloc byte[4];
        stream.ReadExactly(magic);
        if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] is 0 or > 4)
            throw new InvalidDataException($"{name} is not an unsigned-byte IDX file (magic {Convert.ToHexString(magic)}, expected 000008 followed by 1-4 dimensions).");
        var shape = new int[magic[3]];
        Span<byte> dim = stackalloc byte[4];
        for (int i = 0; i < shape.Length; i++)
        {
            stream.ReadExactly(dim);
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(dim);
            if (shape[i] < 0) throw new InvalidDataException($"{name}: dimension {i} is negative.");
        }
        long size = shape.Aggregate(1L, (a, b) => a * b);
        var data = new byte[size];
        try { stream.ReadExactly(data); }
        catch (EndOfStreamException e) { throw new InvalidDataException($"{name} is truncated: its header promises {size} bytes of data.", e); }
        return new IdxArray(shape, data);
    }

    public static void WriteIdx(string path, IdxArray array)
    {
        if (array.Data.LongLength != array.Shape.Aggregate(1L, (a, b) => a * b))
            throw new ArgumentException($"The data has {array.Data.Length} bytes but the shape [{string.Join(", ", array.Shape)}] needs {array.Shape.Aggregate(1L, (a, b) => a * b)}.", nameof(array));
        using var stream = OpenGzipWrite(path);
        stream.Write([0, 0, 0x08, (byte)array.Shape.Length]);
        Span<byte> dim = stackalloc byte[4];
        foreach (int d in array.Shape)
        {
            BinaryPrimitives.WriteInt32BigEndian(dim, d);
            stream.Write(dim);
        }
        stream.Write(array.Data);
    }
}

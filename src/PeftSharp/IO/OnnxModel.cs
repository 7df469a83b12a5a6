using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>A constant tensor of an ONNX graph (an <c>initializer</c>): name, shape, element type and its bytes.</summary>
internal sealed record OnnxInitializer(string Name, long[] Shape, int DataType, ReadOnlyMemory<byte> Data)
{
    /// <summary>ONNX <c>TensorProto.DataType</c> codes this reader turns into tensors.</summary>
    public const int Float = 1, Int32 = 6, Int64 = 7;

    /// <summary>A new CPU tensor holding a copy of the values.</summary>
    public Tensor ToTensor()
    {
        var type = DataType switch
        {
            Float => ScalarType.Float32,
            Int32 => ScalarType.Int32,
            Int64 => ScalarType.Int64,
            _ => throw new NotSupportedException($"ONNX initializer '{Name}' has data type {DataType}; only float (1), int32 (6) and int64 (7) are read."),
        };
        var tensor = empty(Shape, type);
        long expected = tensor.numel() * tensor.ElementSize;
        if (Data.Length != expected)
        {
            tensor.Dispose();
            throw new InvalidDataException($"ONNX initializer '{Name}' of shape [{string.Join(", ", Shape)}] holds {Data.Length} bytes; expected {expected}.");
        }
        tensor.bytes = MemoryMarshal.AsMemory(Data).Span;   // the setter copies; the bytes are not written
        return tensor;
    }
}

/// <summary>A node of an ONNX graph: operator type and the names of its inputs and outputs.</summary>
internal sealed record OnnxNode(string Name, string OpType, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs);

/// <summary>
/// The parts of an ONNX model (<c>ModelProto</c>) needed to take its weights: the graph's nodes, initializers and the
/// names of its inputs and outputs. A small protocol-buffers reader over the file's bytes (no code generation, no
/// dependency); tensors keep pointing into the file's bytes until <see cref="OnnxInitializer.ToTensor"/> copies them.
/// Field numbers follow onnx.proto (opset-independent). External-data models are not supported.
/// </summary>
internal sealed class OnnxModel
{
    OnnxModel(IReadOnlyList<OnnxNode> nodes, IReadOnlyDictionary<string, OnnxInitializer> initializers, IReadOnlyList<string> inputs, IReadOnlyList<string> outputs)
    {
        Nodes = nodes;
        Initializers = initializers;
        Inputs = inputs;
        Outputs = outputs;
    }

    public IReadOnlyList<OnnxNode> Nodes { get; }

    public IReadOnlyDictionary<string, OnnxInitializer> Initializers { get; }

    /// <summary>Names of the graph inputs (initializers listed as inputs by old exporters excluded).</summary>
    public IReadOnlyList<string> Inputs { get; }

    public IReadOnlyList<string> Outputs { get; }

    /// <summary>Parses a serialized <c>ModelProto</c>. Throws <see cref="InvalidDataException"/> for malformed bytes.</summary>
    public static OnnxModel Parse(ReadOnlyMemory<byte> bytes)
    {
        ReadOnlyMemory<byte>? graph = null;
        var model = new ProtoReader(bytes);
        while (model.Next(out int field, out int wire))
            if (field == 7 && wire == ProtoReader.LengthDelimited) graph = model.Bytes();   // ModelProto.graph
            else model.Skip(wire);
        if (graph is null) throw new InvalidDataException("The ONNX model has no graph.");

        var nodes = new List<OnnxNode>();
        var initializers = new Dictionary<string, OnnxInitializer>();
        var inputs = new List<string>();
        var outputs = new List<string>();
        var reader = new ProtoReader(graph.Value);
        while (reader.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == ProtoReader.LengthDelimited: nodes.Add(ReadNode(reader.Bytes())); break;        // GraphProto.node
                case 5 when wire == ProtoReader.LengthDelimited:                                                     // GraphProto.initializer
                    var initializer = ReadTensor(reader.Bytes());
                    initializers[initializer.Name] = initializer;
                    break;
                case 11 when wire == ProtoReader.LengthDelimited: inputs.Add(ReadValueInfoName(reader.Bytes())); break;   // GraphProto.input
                case 12 when wire == ProtoReader.LengthDelimited: outputs.Add(ReadValueInfoName(reader.Bytes())); break;  // GraphProto.output
                default: reader.Skip(wire); break;
            }
        }
        return new OnnxModel(nodes, initializers, inputs.Where(i => !initializers.ContainsKey(i)).ToList(), outputs);
    }

    static OnnxNode ReadNode(ReadOnlyMemory<byte> bytes)
    {
        var inputs = new List<string>();
        var outputs = new List<string>();
        string name = "", opType = "";
        var reader = new ProtoReader(bytes);
        while (reader.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1: inputs.Add(reader.String()); break;   // NodeProto.input
                case 2: outputs.Add(reader.String()); break;  // NodeProto.output
                case 3: name = reader.String(); break;        // NodeProto.name
                case 4: opType = reader.String(); break;      // NodeProto.op_type
                default: reader.Skip(wire); break;
            }
        }
        return new OnnxNode(name, opType, inputs, outputs);
    }

    static OnnxInitializer ReadTensor(ReadOnlyMemory<byte> bytes)
    {
        var shape = new List<long>();
        int dataType = 0;
        string name = "";
        ReadOnlyMemory<byte>? raw = null;
        var floats = new List<float>();
        var longs = new List<long>();
        var reader = new ProtoReader(bytes);
        while (reader.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1: reader.Varints(wire, v => shape.Add((long)v)); break;                  // TensorProto.dims
                case 2: dataType = (int)reader.Varint(); break;                                  // TensorProto.data_type
                case 4: reader.Fixed32s(wire, v => floats.Add(BitConverter.Int32BitsToSingle((int)v))); break;  // float_data
                case 5: reader.Varints(wire, v => longs.Add((int)v)); break;                   // int32_data
                case 7: reader.Varints(wire, v => longs.Add((long)v)); break;                  // int64_data
                case 8: name = reader.String(); break;                                           // TensorProto.name
                case 9: raw = reader.Bytes(); break;                                             // TensorProto.raw_data
                case 14:                                                                         // TensorProto.data_location
                    if (reader.Varint() == 1) throw new NotSupportedException("The ONNX model keeps its weights in external files; only self-contained models are read.");
                    break;
                default: reader.Skip(wire); break;
            }
        }
        // Typed fields hold the values when raw_data is absent; turn them into the little-endian bytes raw_data would hold.
        raw ??= dataType switch
        {
            OnnxInitializer.Float => MemoryMarshal.AsBytes(floats.ToArray().AsSpan()).ToArray(),
            OnnxInitializer.Int32 => MemoryMarshal.AsBytes(longs.Select(v => (int)v).ToArray().AsSpan()).ToArray(),
            OnnxInitializer.Int64 => MemoryMarshal.AsBytes(longs.ToArray().AsSpan()).ToArray(),
            _ => ReadOnlyMemory<byte>.Empty,
        };
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Reading ONNX tensors needs a little-endian machine.");
        return new OnnxInitializer(name, shape.ToArray(), dataType, raw.Value);
    }

    static string ReadValueInfoName(ReadOnlyMemory<byte> bytes)
    {
        var reader = new ProtoReader(bytes);
        while (reader.Next(out int field, out int wire))
            if (field == 1) return reader.String();   // ValueInfoProto.name
            else reader.Skip(wire);
        return "";
    }

    /// <summary>Protocol-buffers wire format: a key varint (field number &lt;&lt; 3 | wire type) before each value.</summary>
    struct ProtoReader(ReadOnlyMemory<byte> buffer)
    {
        public const int Varint64 = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5;
        readonly ReadOnlyMemory<byte> _buffer = buffer;
        int _position;

        readonly bool AtEnd => _position >= _buffer.Length;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (AtEnd) return false;
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            var span = _buffer.Span;
            ulong value = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_position >= span.Length) throw Truncated();
                byte b = span[_position++];
                value |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return value;
            }
            throw new InvalidDataException("Malformed ONNX file: a varint longer than 10 bytes.");
        }

        public ReadOnlyMemory<byte> Bytes()
        {
            ulong length = Varint();
            if (length > (ulong)(_buffer.Length - _position)) throw Truncated();
            var slice = _buffer.Slice(_position, (int)length);
            _position += (int)length;
            return slice;
        }

        public string String() => Encoding.UTF8.GetString(Bytes().Span);

        /// <summary>A repeated varint field, packed (one length-delimited run) or not (one value).</summary>
        public void Varints(int wire, Action<ulong> add)
        {
            if (wire != LengthDelimited) { add(Varint()); return; }
            var packed = new ProtoReader(Bytes());
            while (!packed.AtEnd) add(packed.Varint());
        }

        /// <summary>A repeated fixed32 field (floats), packed or not.</summary>
        public void Fixed32s(int wire, Action<uint> add)
        {
            var data = wire == LengthDelimited ? Bytes().Span : Take(4);
            for (int i = 0; i + 4 <= data.Length; i += 4) add(BinaryPrimitives.ReadUInt32LittleEndian(data[i..]));
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case Varint64: Varint(); break;
                case Fixed64: Take(8); break;
                case LengthDelimited: Bytes(); break;
                case Fixed32: Take(4); break;
                default: throw new InvalidDataException($"Malformed ONNX file: unknown protobuf wire type {wire}.");
            }
        }

        ReadOnlySpan<byte> Take(int count)
        {
            if (_position + count > _buffer.Length) throw Truncated();
            var span = _buffer.Span.Slice(_position, count);
            _position += count;
            return span;
        }

        static InvalidDataException Truncated() => new("Malformed ONNX file: a value runs past the end of its message.");
    }
}

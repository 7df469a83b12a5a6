using Microsoft.Data.Analysis;
using static TorchSharp.torch;

namespace PeftSharp.Data;

/// <summary>
/// 28 x 28 grey images with labels (MNIST, Fashion-MNIST), read once from a frame of <see cref="Datasets.Mnist"/>'s
/// layout (<c>Label</c>, <c>Pixel0</c> .. <c>Pixel783</c>). Batches are (B, 1, 28, 28) float32 in [0, 1].
/// </summary>
public sealed class ImageSet : BatchSource<ImageTensors>
{
    public const int Side = 28, Pixels = Side * Side;

    readonly byte[] _pixels;
    readonly long[] _labels;

    ImageSet(byte[] pixels, long[] labels) => (_pixels, _labels) = (pixels, labels);

    public override int Count => _labels.Length;

    public long Label(int row) => _labels[row];

    /// <summary>The 784 bytes of image <paramref name="row"/>, row by row.</summary>
    public ReadOnlySpan<byte> Image(int row) => _pixels.AsSpan(row * Pixels, Pixels);

    public static ImageSet FromDataFrame(DataFrame frame, string labelColumn = "Label", int? classes = 10)
    {
        var labels = FrameColumns.Labels(frame, labelColumn, classes, nameof(labelColumn));
        var pixels = new byte[labels.Length * Pixels];
        for (int p = 0; p < Pixels; p++)
        {
            var column = FrameColumns.Get(frame, $"Pixel{p}", nameof(frame));
            if (column is ByteDataFrameColumn { NullCount: 0 } bytes)
            {
                long i = 0;
                foreach (var buffer in bytes.GetReadOnlyDataBuffers())
                    foreach (byte value in buffer.Span) pixels[i++ * Pixels + p] = value;
            }
            else
            {
                var values = FrameColumns.Floats(frame, column.Name, nameof(frame));
                for (int i = 0; i < values.Length; i++) pixels[i * Pixels + p] = (byte)Math.Clamp(Math.Round(values[i]), 0, 255);
            }
        }
        return new ImageSet(pixels, labels);
    }

    protected internal override ImageTensors MakeTensors(IReadOnlyList<int> rows, Device? device)
    {
        var values = new float[rows.Count * Pixels];
        for (int b = 0; b < rows.Count; b++)
        {
            var image = Image(rows[b]);
            for (int p = 0; p < Pixels; p++) values[b * Pixels + p] = image[p] / 255f;
        }
        return new ImageTensors(tensor(values, [rows.Count, 1, Side, Side], ScalarType.Float32, device),
                                tensor(rows.Select(r => _labels[r]).ToArray(), ScalarType.Int64, device));
    }
}

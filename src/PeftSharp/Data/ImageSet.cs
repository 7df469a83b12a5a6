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

    readonly int[] _striped;

    ImageSet(byte[] pixels, long[] labels, int[]? striped = null) => (_pixels, _labels, _striped) = (pixels, labels, striped ?? []);

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

    /// <summary>The rows <see cref="WithStripes"/> corrupted, in increasing order (empty for a set read from data).</summary>
    public IReadOnlyList<int> StripedRows => _striped;

    /// <summary>
    /// A copy of the set in which a share <paramref name="fraction"/> of the images (chosen by <paramref name="seed"/>)
    /// carries a synthetic high-frequency corruption: bright stripes one pixel wide every <paramref name="period"/> pixels
    /// (pixel += <paramref name="amplitude"/> · 255 on the stripe lines, capped at 255), horizontal or vertical and at a
    /// phase drawn per image, like the scan-line and sensor-stripe artefacts of remote-sensing images. With 7-pixel patches
    /// and an even period, the stripes' phase flips from one patch row (or column) to the next, so after a ViT's patch
    /// embedding the corruption is a constant plus the highest frequency of the patch grid. Labels stay; the rows
    /// corrupted are in <see cref="StripedRows"/>.
    /// </summary>
    public ImageSet WithStripes(double fraction = 1, int period = 2, double amplitude = 0.5, ulong seed = 0)
    {
        if (!(fraction is >= 0 and <= 1))
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "fraction is the share of images striped, between 0 and 1.");
        if (period is < 2 or > Side)
            throw new ArgumentOutOfRangeException(nameof(period), period, $"period is the distance between stripes in pixels, from 2 (every other line) to {Side}.");
        if (!(amplitude is > 0 and <= 1))
            throw new ArgumentOutOfRangeException(nameof(amplitude), amplitude, "amplitude is the stripes' brightness as a share of white, above 0 and at most 1.");
        var random = new SeededRandom(seed);
        var order = SeededRandom.Permutation(Count, seed);
        var striped = order.Take((int)Math.Round(fraction * Count)).Order().ToArray();
        var pixels = (byte[])_pixels.Clone();
        int add = (int)Math.Round(amplitude * 255);
        foreach (int row in striped)
        {
            bool horizontal = random.NextInt(2) == 0;
            int phase = random.NextInt(period);
            var image = pixels.AsSpan(row * Pixels, Pixels);
            for (int y = 0; y < Side; y++)
                for (int x = 0; x < Side; x++)
                    if (((horizontal ? y : x) + period - phase) % period == 0)
                        image[y * Side + x] = (byte)Math.Min(255, image[y * Side + x] + add);
        }
        return new ImageSet(pixels, (long[])_labels.Clone(), striped);
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

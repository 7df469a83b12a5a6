using static TorchSharp.torch;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// Rotary position embedding (Su et al. 2021) in Llama's "rotate half" layout: channel i of a head is paired with
/// channel i + D/2, and the pair at position p turns by p · θ^(-2i/D). Queries and keys are rotated, values are not, so
/// attention scores depend only on relative positions. No parameters; the cos/sin tables are made per call (cheap).
/// </summary>
public static class RotaryEmbedding
{
    /// <summary>The (T, D) cosine and sine tables for positions <paramref name="offset"/> .. offset + T - 1.</summary>
    public static (Tensor Cos, Tensor Sin) Tables(long length, long offset, int headSize, double theta, Device device)
    {
        using var scope = NewDisposeScope();
        var inverse = pow(theta, arange(0, headSize, 2, ScalarType.Float32, device) / -(float)headSize);      // (D/2)
        var positions = arange(offset, offset + length, ScalarType.Float32, device);                          // (T)
        var angles = outer(positions, inverse);                                                               // (T, D/2)
        var both = cat([angles, angles], -1);                                                                 // (T, D)
        return (both.cos().MoveToOuterDisposeScope(), both.sin().MoveToOuterDisposeScope());
    }

    /// <summary>Rotates <paramref name="x"/> (B, H, T, D) by the tables of <see cref="Tables"/>.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var rotated = cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);                           // rotate_half
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }
}

using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>The non-linearities adapter configs name (AdapterHub's <c>non_linearity</c> values).</summary>
public static class Activations
{
    public static readonly IReadOnlyList<string> Names = ["relu", "gelu", "swish", "silu", "tanh", "leakyrelu", "identity"];

    /// <summary>Throws naming the choices when <paramref name="name"/> is not one of <see cref="Names"/>.</summary>
    public static void Validate(string name, string field)
    {
        if (!Names.Contains(name.ToLowerInvariant()))
            throw new ArgumentOutOfRangeException(field, name, $"{field} must be one of {string.Join(", ", Names)}.");
    }

    /// <summary>Applies the named non-linearity (swish = silu = x·sigmoid(x), gelu is the exact erf form).</summary>
    public static Tensor Apply(string name, Tensor x) => name.ToLowerInvariant() switch
    {
        "relu" => functional.relu(x),
        "gelu" => functional.gelu(x),
        "swish" or "silu" => functional.silu(x),
        "tanh" => x.tanh(),
        "leakyrelu" => functional.leaky_relu(x, 0.01),
        "identity" => x.alias(),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, $"Unknown non-linearity; choose one of {string.Join(", ", Names)}."),
    };

    /// <summary>The width of what <paramref name="module"/> outputs and takes, for the layer types adapters wrap.</summary>
    public static (long In, long Out) Widths(Module module, string path) => module switch
    {
        TorchSharp.Modules.Linear l => (l.in_features, l.out_features),
        TorchSharp.Modules.LayerNorm n => (n.normalized_shape[^1], n.normalized_shape[^1]),
        // get_parameter: Embedding.weight hands out a new tensor handle on every read.
        TorchSharp.Modules.Embedding e => (e.get_parameter("weight")!.shape[1], e.get_parameter("weight")!.shape[1]),
        _ => throw new ArgumentException($"'{path}' is a {module.GetType().Name}; this adapter goes after a Linear, LayerNorm or Embedding."),
    };
}

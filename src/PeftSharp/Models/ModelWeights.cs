using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// A model's state dict to and from a safetensors file, with its keys as they are (PyTorch's dotted paths). Weights
/// may be stored in half precision (float16 or bfloat16) to halve the file; loading converts them back to each
/// parameter's own dtype. Loading checks every key and shape first, so a mismatched file changes nothing.
/// </summary>
public static class ModelWeights
{
    /// <summary>Writes <paramref name="model"/>'s state dict to <paramref name="path"/>, floating-point tensors in
    /// <paramref name="storage"/> (default float16).</summary>
    public static void Save(nn.Module model, string path, ScalarType storage = ScalarType.Float16, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (storage is not (ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32))
            throw new ArgumentOutOfRangeException(nameof(storage), storage, "Store weights as Float16, BFloat16 or Float32.");
        using var scope = NewDisposeScope();
        var entries = model.state_dict()
            .Select(e => new KeyValuePair<string, Tensor>(e.Key, e.Value.is_floating_point() ? e.Value.detach().to(storage) : e.Value.detach()))
            .ToList();
        SafeTensors.Save(path, entries, metadata);
    }

    /// <summary>Loads <paramref name="path"/> into <paramref name="model"/>: the file must hold exactly the model's
    /// state-dict keys with the same shapes.</summary>
    public static void Load(nn.Module model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        var state = model.state_dict();
        var (infos, _) = SafeTensors.ReadHeader(path);
        var missing = state.Keys.Except(infos.Select(i => i.Name)).ToList();
        var extra = infos.Select(i => i.Name).Except(state.Keys).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new InvalidDataException(
                $"{path} does not fit {model.GetName()}: " +
                (missing.Count > 0 ? $"missing {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? $" and {missing.Count - 5} more" : "")}; " : "") +
                (extra.Count > 0 ? $"unexpected {string.Join(", ", extra.Take(5))}{(extra.Count > 5 ? $" and {extra.Count - 5} more" : "")}; " : "") +
                "load it into a model built with the config saved next to it (config.json), before adding adapters.");
        foreach (var info in infos)
            if (!info.Shape.SequenceEqual(state[info.Name].shape))
                throw new InvalidDataException($"{path}: '{info.Name}' has shape [{string.Join(", ", info.Shape)}] but the model's is [{string.Join(", ", state[info.Name].shape)}]; the config does not match the weights.");

        var tensors = SafeTensors.Load(path);
        try
        {
            using var _ = no_grad();
            foreach (var (name, target) in state) target.copy_(tensors[name].to(target.dtype));
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }
}

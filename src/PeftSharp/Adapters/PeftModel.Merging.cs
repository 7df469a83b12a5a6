using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

// PeftModel: folding adapters into the base weights and taking them out again.
public sealed partial class PeftModel
{
    /// <summary>Folds <paramref name="adapterNames"/> (default: the active adapters) into the base weights. A merge
    /// that fails part-way (NaN with <paramref name="safe"/>, or a method that cannot merge) undoes what it merged.</summary>
    public void Merge(IEnumerable<string>? adapterNames = null, bool safe = false)
    {
        EnsureUsable();
        var names = (adapterNames ?? _active).ToList();
        foreach (var name in names)
            if (!_adapters.Any(a => a.Name == name)) throw UnknownAdapter(name);
        foreach (var name in names)
            if (ModelAdapters.TryGetValue(name, out var modelAdapter) && modelAdapter.CannotMergeReason is { } reason)
                throw new NotSupportedException($"Adapter '{name}' ({modelAdapter.MethodName}) cannot be merged: {reason}");
        var layers = Layers;
        foreach (var layer in layers)
            foreach (var name in names.Where(layer.Contains))
                if (!layer[name].CanMerge)
                    throw new NotSupportedException($"Adapter '{name}' ({layer[name].MethodName}) at '{layer.Path}' cannot be merged: {layer[name].CannotMergeReason}");

        // A safe merge checks every merged weight before the first is written, so a failure changes nothing.
        if (safe)
            foreach (var layer in layers)
                foreach (var name in names.Where(n => layer.Contains(n) && !layer.MergedAdapters.Contains(n)))
                {
                    if (!layer[name].MergeIsFinite(layer.BaseLayer))
                        throw new InvalidOperationException(
                            $"Merging adapter '{name}' into '{layer.Path}' gives NaN or Inf weights, so nothing was merged. The adapter is likely broken (check its training).");
                }

        var done = new List<(AdapterLayer Layer, string Name)>();
        try
        {
            foreach (var layer in layers)
                foreach (var name in names.Where(layer.Contains))
                    if (layer.Merge([name], safe).Count > 0) done.Add((layer, name));
        }
        catch
        {
            for (int i = done.Count - 1; i >= 0; i--) done[i].Layer.UnmergeLast(done[i].Name);
            throw;
        }
    }

    /// <summary>Restores the base weights of every layer.</summary>
    public void Unmerge()
    {
        EnsureUsable();
        foreach (var layer in Layers) layer.Unmerge();
    }

    /// <summary>Merges the active adapters and removes every adapter layer, leaving a plain model whose weights
    /// include them (modules_to_save take the trained copy). This PeftModel is finished afterwards.</summary>
    public Module MergeAndUnload(bool safe = false)
    {
        Merge(safe: safe);
        return UnwrapAll();
    }

    /// <summary>Removes every adapter layer without merging, giving back the base model.</summary>
    public Module Unload()
    {
        Unmerge();
        return UnwrapAll();
    }

    Module UnwrapAll()
    {
        foreach (var layer in Layers) Unwrap(layer.Path, layer, layer.DetachBaseAndDispose);
        foreach (var wrapper in SavedModules) Unwrap(wrapper.Path, wrapper, wrapper.UnwrapAndDispose);
        foreach (var name in ModelAdapters.Keys.ToList()) RemoveModelAdapter(name);
        _unloaded = true;
        return Model;
    }
}

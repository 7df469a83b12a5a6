using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>
/// The live values of one attached adapter, whatever its method: the parameters of its module in every adapted layer,
/// of its model-level part (prompts, ...), and of its modules_to_save copies, keyed <c>&lt;where&gt;/&lt;parameter&gt;</c>
/// (the layer's path, <c>model</c> for the model-level part, <c>saved:&lt;path&gt;</c> for a modules_to_save copy). These
/// are what training changes, so a copy of them is a checkpoint of the adapter that can be put back in place later:
/// the parameters keep their identity (an optimizer holding them stays valid), the other adapters are untouched.
/// </summary>
/// <remarks>Unlike <see cref="PeftModel.AdapterTensors"/> (the file's view, which some methods convert), these are
/// the parameters as they live in the model; they are for checkpoints kept in memory, not for files.</remarks>
public static class AdapterState
{
    /// <summary>The parameters of adapter <paramref name="adapterName"/> as they are now, by key (live tensors, not copies).</summary>
    public static IReadOnlyDictionary<string, Tensor> Live(PeftModel peft, string adapterName)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (!peft.AdapterNames.Contains(adapterName))
            throw new ArgumentException($"The model has no adapter '{adapterName}'; it has {(peft.AdapterNames.Count == 0 ? "none" : string.Join(", ", peft.AdapterNames.Select(n => $"'{n}'")))}.", nameof(adapterName));
        var live = new Dictionary<string, Tensor>();
        foreach (var layer in peft.Layers.Where(l => l.Contains(adapterName)))
            foreach (var (name, p) in layer[adapterName].named_parameters()) live[$"{layer.Path}/{name}"] = p;
        if (peft.ModelAdapters.TryGetValue(adapterName, out var modelAdapter))
            foreach (var (name, p) in modelAdapter.named_parameters()) live[$"model/{name}"] = p;
        foreach (var wrapper in peft.SavedModules.Where(w => w.Contains(adapterName)))
            foreach (var (name, p) in wrapper[adapterName].named_parameters()) live[$"saved:{wrapper.Path}/{name}"] = p;
        if (live.Count == 0)
            throw new InvalidOperationException($"Adapter '{adapterName}' has no parameters to keep.");
        return live;
    }

    /// <summary>A copy of adapter <paramref name="adapterName"/>'s parameters, on the CPU and outside any dispose scope
    /// (dispose them when done).</summary>
    public static Dictionary<string, Tensor> Capture(PeftModel peft, string adapterName)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();   // the detached views and device copies on the way are freed here
        return Live(peft, adapterName).ToDictionary(p => p.Key, p => p.Value.detach().to(CPU).clone().DetachFromDisposeScope());
    }

    /// <summary>Copies <paramref name="state"/> (from <see cref="Capture"/> of this adapter, or of another adapter of the
    /// same config on the same layers) into adapter <paramref name="adapterName"/>'s parameters, in place. Every key and
    /// shape is checked before the first value is written.</summary>
    public static void Restore(PeftModel peft, string adapterName, IReadOnlyDictionary<string, Tensor> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var live = Live(peft, adapterName);
        Check(live, state, $"adapter '{adapterName}'");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (key, p) in live) p.copy_(state[key]);
    }

    /// <summary>Fails, naming the first difference, unless <paramref name="state"/> has exactly the keys and shapes of
    /// <paramref name="expected"/>.</summary>
    internal static void Check(IReadOnlyDictionary<string, Tensor> expected, IReadOnlyDictionary<string, Tensor> state, string what)
    {
        var missing = expected.Keys.Where(k => !state.ContainsKey(k)).ToList();
        var extra = state.Keys.Where(k => !expected.ContainsKey(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new ArgumentException($"The values do not fit {what}: " +
                                        (missing.Count > 0 ? $"missing {string.Join(", ", missing.Take(3))}{(missing.Count > 3 ? $" and {missing.Count - 3} more" : "")}" : "") +
                                        (missing.Count > 0 && extra.Count > 0 ? "; " : "") +
                                        (extra.Count > 0 ? $"not in the adapter: {string.Join(", ", extra.Take(3))}{(extra.Count > 3 ? $" and {extra.Count - 3} more" : "")}" : "") +
                                        ". Capture them from an adapter with the same config on the same layers.", nameof(state));
        foreach (var (key, t) in expected)
            if (!t.shape.SequenceEqual(state[key].shape))
                throw new ArgumentException($"'{key}' of {what} has shape [{string.Join(", ", t.shape)}], the values [{string.Join(", ", state[key].shape)}]; " +
                                            "capture them from an adapter with the same config (rank, sizes).", nameof(state));
    }

    internal static void DisposeAll(IEnumerable<Tensor> tensors)
    {
        foreach (var t in tensors) t.Dispose();
    }
}

using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// Hot-swapping a LoRA adapter (Hugging Face PEFT's <c>utils/hotswap.py</c>, <c>hotswap_adapter</c>): another adapter's
/// values are copied into an attached adapter's tensors in place, so no layer is rebuilt, the parameters keep their
/// identity (an optimizer or a cached graph holding them stays valid) and the model keeps its device and dtype.
/// </summary>
/// <remarks>
/// As in PEFT, the configs must agree on <c>use_rslora</c>, <c>lora_dropout</c>, <c>alpha_pattern</c> and
/// <c>use_dora</c>; <c>r</c> and <c>lora_alpha</c> may differ and each layer's scale s is updated from the new config.
/// Stricter than PEFT (which zero-fills tensors the new adapter lacks and pads smaller ranks): the new adapter must hold
/// exactly the same tensors with the same shapes, so that the adapter, its stored config and what it saves stay one
/// consistent adapter. Everything is checked before the first value is copied.
/// </remarks>
public static class LoraHotSwap
{
    /// <summary>Swaps the values of the PEFT adapter directory <paramref name="directory"/> into adapter
    /// <paramref name="adapterName"/>.</summary>
    public static void HotSwapAdapter(this PeftModel peft, string adapterName, string directory)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var config = AdapterFiles.ReadConfig(directory) as LoraConfig
            ?? throw new ArgumentException($"{directory} does not hold a LoRA adapter; hot-swapping replaces LoRA adapters.", nameof(directory));
        var values = SafeTensors.Load(Path.Combine(directory, AdapterFiles.WeightsFileName));
        try
        {
            HotSwapAdapter(peft, adapterName, config, values, Path.Combine(directory, AdapterFiles.WeightsFileName));
        }
        finally
        {
            foreach (var t in values.Values) t.Dispose();
        }
    }

    /// <summary>Swaps <paramref name="tensors"/> (keyed as the file keys them, e.g. from <c>AdapterTensors</c>) and
    /// <paramref name="config"/> into adapter <paramref name="adapterName"/>.</summary>
    public static void HotSwapAdapter(this PeftModel peft, string adapterName, LoraConfig config, IReadOnlyDictionary<string, Tensor> tensors) =>
        HotSwapAdapter(peft, adapterName, config, tensors, "the tensors given");

    static void HotSwapAdapter(PeftModel peft, string adapterName, LoraConfig config, IReadOnlyDictionary<string, Tensor> tensors, string source)
    {
        ArgumentNullException.ThrowIfNull(peft);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tensors);
        if (!peft.AdapterNames.Contains(adapterName))
            throw new ArgumentException($"No adapter named '{adapterName}' to swap into. Adapters: {(peft.AdapterNames.Count == 0 ? "none" : string.Join(", ", peft.AdapterNames))}.", nameof(adapterName));
        var old = peft.Config(adapterName) as LoraConfig
            ?? throw new ArgumentException($"Adapter '{adapterName}' is {peft.Config(adapterName).MethodName}; hot-swapping replaces LoRA adapters.", nameof(adapterName));
        config.Validate();
        // PEFT's check_hotswap_configs_compatible.
        var differences = new List<string>();
        if (old.UseRslora != config.UseRslora) differences.Add($"use_rslora {old.UseRslora} vs {config.UseRslora}");
        if (old.LoraDropout != config.LoraDropout) differences.Add($"lora_dropout {old.LoraDropout} vs {config.LoraDropout}");
        if (old.UseDora != config.UseDora) differences.Add($"use_dora {old.UseDora} vs {config.UseDora}");
        if (!SamePattern(old.AlphaPattern, config.AlphaPattern)) differences.Add("alpha_pattern differs");
        if (differences.Count > 0)
            throw new ArgumentException($"Configs are incompatible for hot-swapping into '{adapterName}': {string.Join("; ", differences)}. Load it as a new adapter instead.", nameof(config));
        if (old.RewritesBase || config.RewritesBase)
            throw new ArgumentException("PiSSA/OLoRA adapters rewrite the base weight; hot-swap their plain-LoRA form (as Save writes it) into a plain LoRA adapter.", nameof(config));

        var layers = peft.Layers.Where(l => l.Contains(adapterName)).ToList();
        if (layers.FirstOrDefault(l => l.MergedAdapters.Contains(adapterName)) is { } merged)
            throw new InvalidOperationException($"Adapter '{adapterName}' is merged into '{merged.Path}'; call Unmerge() before hot-swapping it.");
        var targets = new Dictionary<string, (Tensor Target, AdapterLayer Layer)>();
        foreach (var layer in layers)
            foreach (var (name, tensor) in layer[adapterName].FileTensors())
                targets[AdapterFiles.KeyPrefix + layer.Path + "." + name] = (tensor, layer);
        var extra = peft.AdapterTensors(adapterName);
        var shared = extra.Keys.Where(k => !targets.ContainsKey(k)).ToList();   // modules_to_save copies, trained base biases
        foreach (var t in extra.Values) t.Dispose();
        if (shared.Count > 0)
            throw new ArgumentException($"Adapter '{adapterName}' saves tensors outside its LoRA layers ('{shared[0]}': modules_to_save or bias); hot-swapping covers LoRA tensors only.", nameof(adapterName));

        var missing = targets.Keys.Where(k => !tensors.ContainsKey(k)).ToList();
        if (missing.Count > 0)
            throw new ArgumentException($"{source}: missing '{missing[0]}'{(missing.Count > 1 ? $" and {missing.Count - 1} more" : "")}; a hot swap replaces every tensor of '{adapterName}' (same target modules).");
        var unexpected = tensors.Keys.Where(k => !targets.ContainsKey(k)).ToList();
        if (unexpected.Count > 0)
            throw new ArgumentException($"{source}: '{unexpected[0]}'{(unexpected.Count > 1 ? $" and {unexpected.Count - 1} more" : "")} has no place in adapter '{adapterName}' (which targets {string.Join(", ", layers.Select(l => l.Path))}).");
        foreach (var layer in layers)
            if (layer[adapterName].Rank is int rank && config.RankAt(layer.Path) != rank)
                throw new ArgumentException($"The new config gives '{layer.Path}' rank {config.RankAt(layer.Path)} (r / rank_pattern) but adapter '{adapterName}' has rank {rank} there; a hot swap keeps the ranks.", nameof(config));
        foreach (var (key, (target, _)) in targets)
        {
            var value = tensors[key];
            if (!value.shape.SequenceEqual(target.shape))
                throw new ArgumentException($"{source}: '{key}' has shape [{string.Join(", ", value.shape)}] but adapter '{adapterName}' holds [{string.Join(", ", target.shape)}]; a hot swap keeps the shapes (same rank), so load it as a new adapter instead.");
            if (!value.is_floating_point())
                throw new ArgumentException($"{source}: '{key}' is {value.dtype}, not a floating-point tensor.");
            using var finite = isfinite(value).all();
            if (!finite.item<bool>())
                throw new ArgumentException($"{source}: '{key}' holds NaN or infinite values; nothing was swapped.");
        }

        using (no_grad())
            foreach (var (key, (target, _)) in targets)
                target.copy_(tensors[key]);
        foreach (var layer in layers)
        {
            double scaling = config.ScalingAt(layer.Path);
            switch (layer[adapterName])
            {
                case LoraLinearAdapter lora: lora.Scaling = scaling; break;
                case LoraEmbeddingAdapter embedding: embedding.Scaling = scaling; break;
            }
        }
        peft.ReplaceConfig(adapterName, config);
    }

    static bool SamePattern(IReadOnlyDictionary<string, double>? a, IReadOnlyDictionary<string, double>? b)
    {
        a ??= new Dictionary<string, double>();
        b ??= new Dictionary<string, double>();
        return a.Count == b.Count && a.All(p => b.TryGetValue(p.Key, out var v) && v == p.Value);
    }
}

using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// SPT (He et al. 2023, "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning"): before training, the sensitivity
/// s_n = Σ_b (∂L_b/∂w_n)² of every entry of the target weights is measured on a few calibration batches
/// (<see cref="Sensitivity"/>), and the τ most sensitive entries over all targets together are chosen (the budget).
/// A target holding more than σ_opt of them gets structured tuning, a LoRA W x + (α/r)·B A x (B [out, r] = 0,
/// A [r, in]); every other target gets unstructured tuning, a sparse delta on exactly its chosen entries
/// (<see cref="SptSparseAdapter"/>). Hugging Face PEFT has no SPT: <c>peft_type</c> "SPT" is this library's own, and
/// the decision is written into the file (<c>lora_modules</c>, <c>sparse_pattern</c>; the positions are the
/// <c>spt_indices</c> tensors) so a saved adapter reloads without calibration data.
/// </summary>
public sealed record SptConfig : AdapterConfig
{
    /// <summary>τ: how many weight entries, over all targets together, count as sensitive (the global top-τ).</summary>
    [JsonPropertyName("sensitive_entries"), Option("budget", "tau: number of most sensitive weight entries chosen over all targets", Min = 1)]
    public int? SensitiveEntries { get; init; }

    /// <summary>σ_opt: a target with more sensitive entries than this gets a LoRA instead of a sparse delta. Null: the
    /// rule of the authors' code (ziplab/SPT, <c>get_sensitivity</c>, alpha = 5): a LoRA where the count reaches a fifth
    /// of the LoRA's own size there, count ≥ r·(out + in) / 5, i.e. σ_opt = ⌈r·(out + in) / 5⌉ − 1.</summary>
    [JsonPropertyName("structured_threshold"), Option("threshold", "sigma_opt: more sensitive entries than this in a matrix give it a LoRA (default ceil(r*(out+in)/5) - 1)", Min = 0)]
    public int? StructuredThreshold { get; init; }

    /// <summary>The rank r of the structured targets' LoRA.</summary>
    [JsonPropertyName("r"), Option("rank", "r: rank of the LoRA given to matrices over the threshold", Min = 1, Max = 65536)]
    public int R { get; init; } = 4;

    /// <summary>α: the structured targets' LoRA is scaled by α / r.</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: the LoRA is scaled by alpha / r", Min = 0, MinExclusive = true)]
    public double LoraAlpha { get; init; } = 8;

    /// <summary>The targets calibration gave a LoRA (null until calibrated).</summary>
    [JsonPropertyName("lora_modules")]
    public IReadOnlyList<string>? LoraModules { get; init; }

    /// <summary>The other targets, each with its number of sensitive entries (the length of its sparse delta; null
    /// until calibrated).</summary>
    [JsonPropertyName("sparse_pattern")]
    public IReadOnlyDictionary<string, int>? SparsePattern { get; init; }

    /// <summary>The flat row-major positions each sparse target tunes, as calibration chose them; in memory only (a
    /// file holds them as <c>spt_indices</c>). Needed to create a fresh adapter; not when loading one.</summary>
    [JsonIgnore]
    public IReadOnlyDictionary<string, long[]>? SparseEntries { get; init; }

    public override string MethodName => "spt";

    public override string PeftType => "SPT";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".lora_", ".spt_"];

    /// <summary>Calibration is needed until the allocation is known.</summary>
    public override bool NeedsGradientCalibration => LoraModules is null;

    /// <summary>σ_opt for a weight of <paramref name="outFeatures"/> × <paramref name="inFeatures"/>.</summary>
    public long ThresholdFor(long outFeatures, long inFeatures) => StructuredThreshold ?? (R * (outFeatures + inFeatures) + 4) / 5 - 1;

    public override void Validate()
    {
        base.Validate();
        if (SensitiveEntries is null)
            throw new ArgumentException("sensitive_entries (τ, --budget) is required: how many of the most sensitive weight entries to tune, over all targets together (e.g. 2000).", nameof(SensitiveEntries));
        if ((LoraModules is null) != (SparsePattern is null))
            throw new ArgumentException("lora_modules and sparse_pattern are SPT's allocation and come together: set both (e.g. from a saved adapter) or neither (calibration decides).", nameof(SparsePattern));
        if (LoraModules is { } lora && SparsePattern is { } sparse)
        {
            if (lora.FirstOrDefault(sparse.ContainsKey) is { } both)
                throw new ArgumentException($"'{both}' is both in lora_modules and in sparse_pattern; a target gets either a LoRA or a sparse delta.", nameof(SparsePattern));
            if (sparse.FirstOrDefault(p => p.Value < 0) is { Key: not null } negative)
                throw new ArgumentOutOfRangeException(nameof(SparsePattern), negative.Value, $"sparse_pattern['{negative.Key}'] counts entries: 0 or more.");
        }
        if (SparseEntries is { } entries)
            foreach (var (path, positions) in entries)
                if (SparsePattern?.GetValueOrDefault(path, -1) != positions.Length)
                    throw new ArgumentException($"SparseEntries['{path}'] has {positions.Length} positions but sparse_pattern gives it {SparsePattern?.GetValueOrDefault(path, -1).ToString() ?? "nothing"}.", nameof(SparseEntries));
    }

    /// <summary>Measures the targets' sensitivity with <paramref name="calibrate"/> (it runs the model and calls
    /// backward on each batch's loss), takes the global top-τ and splits the targets by σ_opt.</summary>
    public override AdapterConfig AllocateFromGradients(Module model, IReadOnlyList<string> targetPaths, Action calibrate)
    {
        using var map = Sensitivity.Measure(model, targetPaths, calibrate);
        if (SensitiveEntries > map.TotalEntries)
            throw new ArgumentOutOfRangeException(nameof(SensitiveEntries), SensitiveEntries,
                $"sensitive_entries (τ = {SensitiveEntries}) exceeds the {map.TotalEntries} entries of the {targetPaths.Count} targets; choose at most that.");
        var top = map.TopEntries(SensitiveEntries!.Value);
        var lora = new List<string>();
        var sparse = new Dictionary<string, int>();
        var entries = new Dictionary<string, long[]>();
        foreach (var path in targetPaths)
        {
            var shape = map[path].shape;
            if (top[path].Length > ThresholdFor(shape[0], shape[1])) lora.Add(path);
            else (sparse[path], entries[path]) = (top[path].Length, top[path]);
        }
        return this with { LoraModules = lora, SparsePattern = sparse, SparseEntries = entries };
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        if (LoraModules is null || SparsePattern is null)
            throw new InvalidOperationException("SPT's allocation comes from calibration: add it with AddAdapter(name, config, calibrate: ...) or load a saved SPT adapter.");
        if (LoraModules.Contains(context.Path))
            return new LoraLinearAdapter(R, LoraAlpha / R, 0, false, weight, context.Initialize ? LoraInit.Default : null);
        if (!SparsePattern.TryGetValue(context.Path, out int count))
            throw new ArgumentException($"SPT's allocation has no entry for target '{context.Path}' (lora_modules or sparse_pattern); it was calibrated on other targets.");
        long[]? positions = null;
        if (context.Initialize && !(SparseEntries?.TryGetValue(context.Path, out positions) ?? false))
            throw new InvalidOperationException($"SPT does not know which {count} entries of '{context.Path}' to tune: calibrate (AddAdapter(..., calibrate: ...)), give SparseEntries, or load a saved adapter.");
        return new SptSparseAdapter(count, positions, weight);
    }

    /// <summary>A structured target holds lora_A.weight [r, in] and lora_B.weight [out, r]; a sparse one spt_values [k]
    /// and spt_indices [k] (int64), k its sparse_pattern count.</summary>
    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems)
    {
        var values = tensors.FirstOrDefault(t => t.Name.EndsWith(".spt_values"));
        var indices = tensors.FirstOrDefault(t => t.Name.EndsWith(".spt_indices"));
        if (values is not null || indices is not null)
        {
            if (values is null || indices is null || values.Shape.Length != 1 || !values.Shape.SequenceEqual(indices.Shape))
                problems.Add($"'{path}': a sparse SPT delta needs spt_values [k] and spt_indices [k] of one length k.");
            else if (SparsePattern?.GetValueOrDefault(path, -1) is int k && k != values.Shape[0])
                problems.Add($"'{path}': spt_values has {values.Shape[0]} entries, sparse_pattern says {k}.");
            return null;
        }
        var a = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_A.weight"));
        var b = tensors.FirstOrDefault(t => t.Name.EndsWith(".lora_B.weight"));
        if (a is null || b is null || a.Shape.Length != 2 || b.Shape.Length != 2 || b.Shape[1] != a.Shape[0])
        {
            problems.Add($"'{path}' needs either spt_values and spt_indices or lora_A.weight [r, in] and lora_B.weight [out, r].");
            return null;
        }
        return (int)a.Shape[0];
    }
}

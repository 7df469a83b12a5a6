using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// Wraps a model's module (kept unchanged as <c>base_layer</c> until a merge) and holds its named adapters. The output
/// is the base output plus the contributions of the active adapters, or exactly the base output when adapters are
/// disabled or merged. A row-wise adapter choice (<see cref="PeftModel.UseAdapterPerRow"/>) applies each row's own
/// adapter in one batch.
/// </summary>
public sealed class AdapterLayer : Module<Tensor, Tensor>
{
    /// <summary>The per-row adapter name meaning "no adapter, base model only" (PEFT's "__base__").</summary>
    public const string BaseOnly = "__base__";

    readonly Module<Tensor, Tensor> _baseLayer;
    readonly AdapterDict _adapters;
    readonly List<string> _active = [];
    readonly List<string> _merged = [];

    internal AdapterLayer(string path, Module<Tensor, Tensor> baseLayer) : base(nameof(AdapterLayer))
    {
        Path = path;
        _baseLayer = baseLayer;
        _adapters = new AdapterDict();
        register_module("base_layer", _baseLayer);
        register_module("adapters", _adapters);
        ModuleSurgery.CopyDeviceRecord(baseLayer, this);
    }

    /// <summary>The dotted path of this layer in the model.</summary>
    public string Path { get; }

    /// <summary>The wrapped module.</summary>
    public Module<Tensor, Tensor> BaseLayer => _baseLayer;

    /// <summary>Names of the adapters held here, in the order they were added.</summary>
    public IReadOnlyList<string> AdapterNames => _adapters.Names;

    public AdapterModule this[string adapterName] => _adapters[adapterName];

    public bool Contains(string adapterName) => _adapters.Contains(adapterName);

    /// <summary>The adapters that take part in the forward pass (summed when several).</summary>
    public IReadOnlyList<string> ActiveAdapters => _active;

    /// <summary>The adapters folded into the base weights, in the order they were merged.</summary>
    public IReadOnlyList<string> MergedAdapters => _merged;

    public bool IsMerged => _merged.Count > 0;

    /// <summary>When true the layer returns exactly the base output (merged adapters are unmerged first).</summary>
    public bool AdaptersDisabled { get; internal set; }

    /// <summary>The forward context in force (set inside <see cref="PeftModel.Use"/>), or null.</summary>
    public ForwardContext? Context { get; internal set; }

    // The rows of the batch the adapter being applied sees (a mixed batch hands each adapter its own rows), or null for all.
    long[]? _currentRows;

    /// <summary>The task ids of the rows an adapter is applied to right now (the context's, narrowed to the adapter's own
    /// rows in a mixed batch), or null when the context has none.</summary>
    public IReadOnlyList<int>? RowTaskIds =>
        Context?.TaskIds is not { } ids ? null : _currentRows is { } rows ? rows.Select(r => ids[(int)r]).ToArray() : ids;

    /// <summary>How several active adapters combine (set by <c>PeftModel.SetActiveAdapters</c>).</summary>
    public AdapterComposition Composition { get; internal set; } = AdapterComposition.Stack;

    /// <summary>Weights of <see cref="AdapterComposition.Average"/>, one per active adapter; null for 1/K each.</summary>
    public IReadOnlyList<double>? AverageWeights { get; internal set; }

    internal void Add(string adapterName, AdapterModule adapter)
    {
        _adapters.Add(adapterName, adapter);
        adapter.Layer = this;
    }

    internal void Remove(string adapterName)
    {
        if (_merged.Contains(adapterName))
            throw new InvalidOperationException($"Adapter '{adapterName}' is merged into '{Path}'; unmerge before deleting it.");
        _adapters.Remove(adapterName).Dispose();
        _active.Remove(adapterName);
    }

    internal void SetActive(IReadOnlyList<string> adapterNames)
    {
        _active.Clear();
        _active.AddRange(adapterNames.Where(_adapters.Contains));
    }

    public override Tensor forward(Tensor x)
    {
        if (AdaptersDisabled)
        {
            if (IsMerged) Unmerge();
            return _baseLayer.call(x);
        }
        if (Context?.TaskIds is { } taskIds && taskIds.Count != x.shape[0])
            throw new ArgumentException($"Layer '{Path}': the batch has {x.shape[0]} rows but the forward context has {taskIds.Count} task ids (one per row is needed).");
        if (Context?.AdapterNames is { } rowNames) return ForwardPerRow(x, rowNames);
        if (IsMerged || _active.Count == 0) return _baseLayer.call(x);

        // One scope per layer: intermediates die here (autograd keeps what backward needs), only the output leaves.
        using var scope = NewDisposeScope();
        if (_active.Count == 1 && _adapters[_active[0]].TryFusedForward(x, _baseLayer) is { } fused)
            return fused.MoveToOuterDisposeScope();
        var result = OwnedBaseOutput(x);
        if (_active.Count == 1 || Composition == AdapterComposition.Stack)
        {
            foreach (var name in _active)
                result = _adapters[name].Apply(x, result, _baseLayer);
            return result.MoveToOuterDisposeScope();
        }
        // Sum / Average: every adapter sees the base output; their contributions are weighed and added.
        var baseOutput = result;
        var combined = baseOutput.clone();
        for (int k = 0; k < _active.Count; k++)
        {
            var delta = _adapters[_active[k]].Delta(x, baseOutput, _baseLayer);
            double weight = Composition == AdapterComposition.Sum ? 1 : AverageWeights?[k] ?? 1.0 / _active.Count;
            combined = combined.add_(delta, alpha: weight);
        }
        return combined.MoveToOuterDisposeScope();
    }

    Tensor ForwardPerRow(Tensor x, IReadOnlyList<string> rowNames)
    {
        if (IsMerged)
            throw new InvalidOperationException($"Layer '{Path}' has merged adapters ({string.Join(", ", _merged)}); per-row adapter selection needs them unmerged. Call Unmerge() first.");
        if (x.shape[0] != rowNames.Count)
            throw new ArgumentException($"Layer '{Path}': the batch has {x.shape[0]} rows but {rowNames.Count} adapter names were given (one per row is needed).");

        using var scope = NewDisposeScope();
        var result = OwnedBaseOutput(x);
        var present = rowNames.Distinct().Where(n => n != BaseOnly && _adapters.Contains(n)).ToList();
        var path = Context?.PerRowPath ?? PerRowPath.Auto;
        if (present.Count > 0 && (path == PerRowPath.Batched || (path == PerRowPath.Auto && present.Count >= 2))
            && present.Select(n => _adapters[n].LowRank).ToList() is var forms && forms.All(f => f is not null))
        {
            LastPerRowPath = PerRowPath.Batched;
            return LowRankBatch.Apply(x, result, rowNames, present, forms!).MoveToOuterDisposeScope();
        }
        LastPerRowPath = PerRowPath.Grouped;
        foreach (var name in present)
        {
            var rows = Enumerable.Range(0, rowNames.Count).Where(i => rowNames[i] == name).Select(i => (long)i).ToArray();
            var index = tensor(rows, dtype: ScalarType.Int64, device: x.device);
            // Adapters that read the sublayer's residual see the same rows of it.
            using var rowContext = SublayerContext.Current?.EnterRows(index);
            _currentRows = rows;
            try
            {
                var updated = _adapters[name].Apply(x.index_select(0, index), result.index_select(0, index), _baseLayer);
                result = result.index_copy(0, index, updated);
            }
            finally
            {
                _currentRows = null;
            }
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>The path the last mixed batch took at this layer (<see cref="PerRowPath.Batched"/> or
    /// <see cref="PerRowPath.Grouped"/>), for tests and benchmarks.</summary>
    public PerRowPath? LastPerRowPath { get; private set; }

    // Adapters may add into the result in place; Linear and Embedding return a fresh tensor, anything else (which
    // might hand back its input or a cached tensor) is copied first.
    Tensor OwnedBaseOutput(Tensor x)
    {
        var output = _baseLayer.call(x);
        return _baseLayer is TorchSharp.Modules.Linear or TorchSharp.Modules.Embedding ? output : output.clone();
    }

    /// <summary>Folds <paramref name="adapterNames"/> (default: the active ones) into the base weights. Adapters
    /// already merged are skipped, so merging twice changes nothing. With <paramref name="safe"/> the merged
    /// weights are checked for NaN/Inf before anything is written.</summary>
    internal IReadOnlyList<string> Merge(IEnumerable<string>? adapterNames = null, bool safe = false)
    {
        var done = new List<string>();
        foreach (var name in (adapterNames ?? _active).Where(_adapters.Contains).ToList())
        {
            if (_merged.Contains(name)) continue;
            var adapter = _adapters[name];
            if (!adapter.CanMerge)
                throw new NotSupportedException($"Adapter '{name}' ({adapter.MethodName}) at '{Path}' cannot be merged: {adapter.CannotMergeReason}");
            if (safe && !adapter.MergeIsFinite(_baseLayer))
                throw new InvalidOperationException(
                    $"Merging adapter '{name}' into '{Path}' gives NaN or Inf weights; nothing was merged at this layer. The adapter is likely broken (check its training).");
            using var merged = adapter.MergedWeight(_baseLayer);
            adapter.Merge(_baseLayer, merged);
            _merged.Add(name);
            done.Add(name);
        }
        return done;
    }

    /// <summary>Restores the base weights, unmerging in reverse order of merging.</summary>
    internal void Unmerge()
    {
        for (int i = _merged.Count - 1; i >= 0; i--)
        {
            _adapters[_merged[i]].Unmerge(_baseLayer);
            _merged.RemoveAt(i);
        }
    }

    internal void UnmergeLast(string adapterName)
    {
        if (_merged.Count == 0 || _merged[^1] != adapterName) return;
        _adapters[adapterName].Unmerge(_baseLayer);
        _merged.RemoveAt(_merged.Count - 1);
    }

    /// <summary>Frees the adapters and hands back the base layer, no longer registered here (for unwrapping).</summary>
    internal Module<Tensor, Tensor> DetachBaseAndDispose()
    {
        _internal_submodules.Remove("base_layer");
        Dispose();
        return _baseLayer;
    }

    /// <summary>A named, ordered set of adapter modules registered under their names (keys: <c>adapters.&lt;name&gt;.…</c>).</summary>
    sealed class AdapterDict : Module
    {
        readonly List<string> _names = [];

        public AdapterDict() : base("adapters") { }

        public IReadOnlyList<string> Names => _names;

        public bool Contains(string name) => _names.Contains(name);

        public AdapterModule this[string name] =>
            _internal_submodules.TryGetValue(name, out var module) ? (AdapterModule)module
                : throw new KeyNotFoundException($"No adapter named '{name}' here; adapters: {string.Join(", ", _names)}.");

        public void Add(string name, AdapterModule adapter)
        {
            if (_names.Contains(name)) throw new ArgumentException($"An adapter named '{name}' already exists here.");
            register_module(name, adapter);
            _names.Add(name);
        }

        public AdapterModule Remove(string name)
        {
            var adapter = this[name];
            _internal_submodules.Remove(name);
            _names.Remove(name);
            return adapter;
        }
    }
}

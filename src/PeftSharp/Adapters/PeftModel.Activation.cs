using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

// PeftModel: which adapters run, how they combine, what trains, and what travels with a forward pass.
public sealed partial class PeftModel
{
    /// <summary>Makes <paramref name="adapterNames"/> the adapters used in the forward pass and the ones that train; when
    /// several are active they combine as <see cref="Composition"/> says (by default stacked, which for LoRA-like
    /// adapters is their sum).</summary>
    public void SetActiveAdapters(params string[] adapterNames) => SetActiveAdapters(Composition, null, adapterNames);

    /// <summary>Activates <paramref name="adapterNames"/> combined as <paramref name="composition"/> says (stacked, summed,
    /// or averaged with <paramref name="averageWeights"/>, one per adapter, default 1/K each).</summary>
    public void SetActiveAdapters(AdapterComposition composition, IReadOnlyList<double>? averageWeights, params string[] adapterNames)
    {
        EnsureUsable();
        if (averageWeights is not null && (composition != AdapterComposition.Average || averageWeights.Count != adapterNames.Distinct().Count()))
            throw new ArgumentException($"averageWeights go with AdapterComposition.Average, one weight per adapter ({adapterNames.Distinct().Count()} here); got {averageWeights.Count} with {composition}.", nameof(averageWeights));
        if (adapterNames.Length == 0) throw new ArgumentException("Name at least one adapter to activate; to use the base model alone, call DisableAdapters().");
        foreach (var name in adapterNames)
            if (!_adapters.Any(a => a.Name == name)) throw UnknownAdapter(name);
        Composition = composition;
        _averageWeights = averageWeights?.ToArray();
        _active.Clear();
        _active.AddRange(adapterNames.Distinct());
        SyncLayers();
    }

    double[]? _averageWeights;

    void SyncLayers()
    {
        foreach (var layer in Layers)
        {
            layer.SetActive(_active);
            layer.Composition = Composition;
            // The weights follow the layer's active adapters (a layer may hold only some of them).
            layer.AverageWeights = _averageWeights is null ? null
                : layer.ActiveAdapters.Select(n => _averageWeights[_active.IndexOf(n)]).ToArray();
        }
        foreach (var wrapper in SavedModules) wrapper.SetActive(_active);
        SyncModelAdapters();
        UpdateTrainable(_active);
    }

    // Model adapters switch off before others switch on, so a hook held by one is free for the next.
    void SyncModelAdapters()
    {
        var modelAdapters = ModelAdapters;
        foreach (var (name, adapter) in modelAdapters)
            if (!_active.Contains(name) || AdaptersDisabled) adapter.SetOn(Model, false);
        foreach (var (name, adapter) in modelAdapters)
            if (_active.Contains(name) && !AdaptersDisabled) adapter.SetOn(Model, true);
    }

    // Freezes everything but the given adapters' tensors, their modules_to_save copies, and the base parameters
    // their configs train (LoRA bias modes). PEFT: _mark_only_adapters_as_trainable.
    void UpdateTrainable(IReadOnlyList<string> trainableAdapters)
    {
        foreach (var (_, parameter) in Model.named_parameters()) parameter.requires_grad = false;
        var layers = Layers;
        foreach (var layer in layers)
            foreach (var name in layer.AdapterNames.Where(trainableAdapters.Contains))
                foreach (var (parameterName, p) in layer[name].named_parameters())
                    p.requires_grad = layer[name].Trains(parameterName);
        foreach (var wrapper in SavedModules)
            foreach (var name in wrapper.AdapterNames.Where(trainableAdapters.Contains))
                foreach (var p in wrapper[name].parameters()) p.requires_grad = true;
        foreach (var (name, modelAdapter) in ModelAdapters)
            if (trainableAdapters.Contains(name))
                foreach (var p in modelAdapter.parameters()) p.requires_grad = true;
        var parameters = Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var name in trainableAdapters)
            foreach (var path in TrainableBaseParameters(name)) parameters[path].requires_grad = true;
    }

    /// <summary>Paths of the base model's own parameters (not adapter tensors, not modules_to_save).</summary>
    internal IReadOnlyList<string> BaseParameterPaths()
    {
        var excluded = Layers.Select(l => l.Path + ".adapters.").Concat(SavedModules.Select(w => w.Path + "."))
            .Append(ModelAdapterDict.RegisteredName + ".").ToList();
        return Model.named_parameters().Select(p => p.name)
            .Where(p => !excluded.Any(e => p.StartsWith(e, StringComparison.Ordinal))).ToList();
    }

    /// <summary>The base parameters that adapter <paramref name="adapterName"/> trains and saves (e.g. LoRA biases).</summary>
    internal IEnumerable<string> TrainableBaseParameters(string adapterName) =>
        Config(adapterName).TrainableBaseParameters(BaseParameterPaths(), Layers.Where(l => l.Contains(adapterName)).Select(l => l.Path).ToList());

    /// <summary>Makes every adapter layer return exactly the base output (merged adapters are unmerged on the next
    /// forward pass, as in PEFT). Dispose the result, or call <see cref="EnableAdapters"/>, to turn them back on.</summary>
    public IDisposable DisableAdapters()
    {
        EnsureUsable();
        SetDisabled(true);
        return new OnDispose(EnableAdapters);
    }

    public void EnableAdapters() => SetDisabled(false);

    void SetDisabled(bool disabled)
    {
        AdaptersDisabled = disabled;
        foreach (var layer in Layers) layer.AdaptersDisabled = disabled;
        foreach (var wrapper in SavedModules) wrapper.Disabled = disabled;
        SyncModelAdapters();
    }

    /// <summary>Within the returned scope, row i of a batch goes through adapter <c>adapterNames[i]</c> alone
    /// (<see cref="AdapterLayer.BaseOnly"/> for the base model), all in one forward pass.</summary>
    /// <remarks><paramref name="path"/>: how each layer computes the mixed batch (<see cref="PerRowPath"/>: by default the
    /// gathered batched product where two or more low-rank adapters meet, else the grouped loop).</remarks>
    public IDisposable UseAdapterPerRow(IReadOnlyList<string> adapterNames, PerRowPath path = PerRowPath.Auto) =>
        Use(new ForwardContext { AdapterNames = adapterNames, PerRowPath = path });

    /// <summary>
    /// Puts <paramref name="context"/> (per-row task ids, per-row adapter names, a routing record) in force for the
    /// forward passes inside the returned scope; disposing it restores the context that was in force before (none,
    /// usually), so nothing carries over into later calls.
    /// </summary>
    public IDisposable Use(ForwardContext context)
    {
        EnsureUsable();
        ArgumentNullException.ThrowIfNull(context);
        if (context.TaskIds?.FirstOrDefault(t => t < 0) is int negative && negative < 0)
            throw new ArgumentOutOfRangeException(nameof(context), negative, "Task ids are 0-based row labels; a task id is negative.");
        if (context.AdapterNames is { } adapterNames)
        {
            var unknown = adapterNames.Distinct().Where(n => n != AdapterLayer.BaseOnly && !_adapters.Any(a => a.Name == n)).ToList();
            if (unknown.Count > 0)
                throw new ArgumentException($"Unknown adapter name(s) {string.Join(", ", unknown.Select(u => $"'{u}'"))} in the per-row list; known: {string.Join(", ", AdapterNames)} and '{AdapterLayer.BaseOnly}' for the base model.");
            if (ModelAdapters.FirstOrDefault(m => !m.Value.SupportsPerRow && (adapterNames.Contains(m.Key) || m.Value.IsOn)) is { Key: not null } whole)
                throw new NotSupportedException(
                    $"Adapter '{whole.Key}' ({whole.Value.MethodName}) changes the whole batch through a model hook, so rows of one batch cannot use different adapters with it. " +
                    "Run one batch per adapter instead (SetActiveAdapters, then forward).");
        }
        var layers = Layers;
        var wrappers = SavedModules;
        var previous = (layers.Select(l => l.Context).ToList(), wrappers.Select(w => w.Context).ToList());
        foreach (var layer in layers) layer.Context = context;
        foreach (var wrapper in wrappers) wrapper.Context = context;
        return new OnDispose(() =>
        {
            for (int i = 0; i < layers.Count; i++) layers[i].Context = previous.Item1[i];
            for (int i = 0; i < wrappers.Count; i++) wrappers[i].Context = previous.Item2[i];
        });
    }

    /// <summary>Runs the model (a Tensor → Tensor module) with <paramref name="context"/> in force.</summary>
    public Tensor Forward(Tensor input, ForwardContext context)
    {
        if (Model is not Module<Tensor, Tensor> module)
            throw new InvalidOperationException($"{Model.GetType().Name} is not a Module<Tensor, Tensor>; call its forward yourself.");
        using var _ = Use(context);
        return module.call(input);
    }

    /// <summary>Runs the model (a Tensor → Tensor module) with an optional adapter name per row.</summary>
    public Tensor Forward(Tensor input, IReadOnlyList<string>? adapterNames = null)
    {
        if (Model is not Module<Tensor, Tensor> module)
            throw new InvalidOperationException($"{Model.GetType().Name} is not a Module<Tensor, Tensor>; call its forward yourself.");
        if (adapterNames is null) return module.call(input);
        using var _ = UseAdapterPerRow(adapterNames);
        return module.call(input);
    }

    /// <summary>
    /// AdapterHub's Parallel block: runs <paramref name="input"/> once through each adapter in
    /// <paramref name="adapterNames"/> (<see cref="AdapterLayer.BaseOnly"/> for the base model) in one forward pass, the
    /// batch repeated once per adapter. Returns the outputs stacked along the batch: rows [k·B, (k+1)·B) are adapter k's.
    /// </summary>
    public Tensor ForwardEach(Tensor input, IReadOnlyList<string> adapterNames)
    {
        if (adapterNames.Count == 0) throw new ArgumentException("Name at least one adapter to run.", nameof(adapterNames));
        long batch = input.shape[0];
        var rows = adapterNames.SelectMany(n => Enumerable.Repeat(n, (int)batch)).ToList();
        using var repeated = cat(Enumerable.Repeat(input, adapterNames.Count).ToList(), 0);
        return Forward(repeated, rows);
    }
}

using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// A model with adapters: the user's module, changed in place (target layers wrapped in <see cref="AdapterLayer"/>,
/// <c>modules_to_save</c> in <see cref="ModulesToSaveWrapper"/>), plus the bookkeeping of named adapters, as Hugging
/// Face PEFT's <c>PeftModel</c>: add, activate (one or several, summed), delete, disable, merge / unmerge /
/// merge-and-unload, a trainable-parameter report, per-row adapter choice, and save/load in PEFT's file layout.
/// The base stays frozen; the active adapters train.
/// </summary>
public sealed class PeftModel
{
    public const string DefaultAdapterName = "default";

    readonly List<(string Name, AdapterConfig Config)> _adapters = [];
    readonly List<string> _active = [];
    bool _unloaded;

    PeftModel(Module model) => Model = model;

    /// <summary>The model, with its adapter layers in place.</summary>
    public Module Model { get; }

    /// <summary>Adapter names in the order they were added.</summary>
    public IReadOnlyList<string> AdapterNames => _adapters.Select(a => a.Name).ToList();

    public AdapterConfig Config(string adapterName) =>
        _adapters.FirstOrDefault(a => a.Name == adapterName).Config ?? throw UnknownAdapter(adapterName);

    public IReadOnlyList<string> ActiveAdapters => _active;

    public bool AdaptersDisabled { get; private set; }

    /// <summary>The adapter layers, in model order.</summary>
    public IReadOnlyList<AdapterLayer> Layers => Model.named_modules().Select(m => m.module).OfType<AdapterLayer>().ToList();

    /// <summary>The model-level parts of adapters (see <see cref="ModelAdapter"/>), by adapter name.</summary>
    public IReadOnlyDictionary<string, ModelAdapter> ModelAdapters =>
        ModelAdapterDict.Find(Model) is { } dict ? dict.Names.ToDictionary(n => n, n => dict[n]) : new Dictionary<string, ModelAdapter>();

    /// <summary>How several active adapters combine in each layer (see <see cref="AdapterComposition"/>).</summary>
    public AdapterComposition Composition { get; private set; } = AdapterComposition.Stack;

    /// <summary>The <c>modules_to_save</c> wrappers, in model order.</summary>
    public IReadOnlyList<ModulesToSaveWrapper> SavedModules => Model.named_modules().Select(m => m.module).OfType<ModulesToSaveWrapper>().ToList();

    /// <summary>Puts an adapter named <paramref name="adapterName"/> into <paramref name="model"/> and activates it.
    /// <paramref name="calibrate"/>: for methods that initialise from statistics of their targets' inputs
    /// (<see cref="AdapterConfig.NeedsCalibration"/>), an action that runs the model on a few batches.</summary>
    public static PeftModel Create(Module model, AdapterConfig config, string adapterName = DefaultAdapterName, Action? calibrate = null)
    {
        var peft = new PeftModel(model);
        peft.AddAdapter(adapterName, config, calibrate);
        peft.SetActiveAdapters(adapterName);
        return peft;
    }

    /// <summary>A <see cref="PeftModel"/> over <paramref name="model"/> with no adapter yet, to add or load several into
    /// (<see cref="AddAdapter(string, AdapterConfig, Action?)"/>, <see cref="LoadAdapter"/>, adapters from tensors).</summary>
    public static PeftModel For(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new PeftModel(model);
    }

    /// <summary>Loads a PEFT adapter directory into <paramref name="model"/> as <paramref name="adapterName"/> and
    /// activates it. Fails, with the model unchanged, when the files do not fit the model. Tensors holding NaN or
    /// infinite values are refused unless <paramref name="allowNonFinite"/>.</summary>
    public static PeftModel Load(Module model, string directory, string adapterName = DefaultAdapterName, bool trainable = false, bool allowNonFinite = false)
    {
        var peft = new PeftModel(model);
        peft.LoadAdapter(directory, adapterName, trainable, allowNonFinite);
        return peft;
    }

    /// <summary>Which modules <paramref name="config"/> would adapt in <paramref name="model"/>, changing nothing.</summary>
    public static TargetSelection PreviewTargets(Module model, AdapterConfig config)
    {
        config.Validate();
        return SelectTargets(model, config);
    }

    /// <summary>The layers <paramref name="config"/> goes into; none for methods that do not target layers.</summary>
    internal static TargetSelection SelectTargets(Module model, AdapterConfig config) =>
        config.TargetsLayers ? TargetMatcher.Select(model, config, config.CanHold) : new TargetSelection([], [], []);

    internal void CheckDependencies(AdapterConfig config)
    {
        var missing = config.DependsOn.Where(d => !_adapters.Any(a => a.Name == d)).ToList();
        if (missing.Count > 0)
            throw new ArgumentException(
                $"{config.MethodName} uses adapter(s) {string.Join(", ", missing.Select(m => $"'{m}'"))}, which this model does not have " +
                $"(adapters: {(_adapters.Count == 0 ? "none" : string.Join(", ", AdapterNames))}). Add or load them first.");
    }

    /// <summary>Adds another adapter. Like PEFT's <c>add_adapter</c> it does not become active by itself
    /// (call <c>SetActiveAdapters</c>); only active adapters train.</summary>
    /// <remarks><paramref name="calibrate"/> runs the model on a few batches for methods that initialise from
    /// statistics of their targets' inputs (<see cref="AdapterConfig.NeedsCalibration"/>); others ignore it.</remarks>
    public TargetSelection AddAdapter(string adapterName, AdapterConfig config, Action? calibrate = null)
    {
        EnsureUsable();
        ValidateNewName(adapterName);
        config.Validate();
        CheckDependencies(config);
        var selection = SelectTargets(Model, config);
        Dictionary<string, LayerStatistics>? statistics = null;
        if (config.NeedsCalibration)
            statistics = Calibration.Collect(Model, selection.Matched, calibrate ?? throw new ArgumentException(
                $"{config.MethodName} initialises from statistics of each target's inputs: pass a calibration action that runs the model on a few batches, " +
                "e.g. AddAdapter(name, config, calibrate: () => { foreach (var batch in batches) model.call(batch); }).", nameof(calibrate)));
        ModelAdapter? modelAdapter = null;
        Dictionary<string, AdapterModule> adapters;
        try
        {
            modelAdapter = config.CreateModelAdapter(Model, selection.Matched, initialize: true);
            adapters = CreateAdapters(config, selection.Matched, initialize: true, modelAdapter, statistics);
        }
        catch
        {
            modelAdapter?.Dispose();
            throw;
        }
        finally
        {
            if (statistics is not null) foreach (var s in statistics.Values) s.Dispose();
        }
        Commit(adapterName, config, adapters, modelAdapter, initialize: true);
        return selection;
    }

    /// <summary>
    /// Adds an adapter whose values are given: <paramref name="tensors"/> by file key
    /// (<c>base_model.model.&lt;module path&gt;.&lt;tensor name&gt;</c>, as <see cref="AdapterTensors"/> returns them and
    /// <c>adapter_model.safetensors</c> holds them), e.g. a merge of other adapters. It takes the same path as
    /// <see cref="LoadAdapter"/>: keys, shapes, dtypes and values are checked before the model changes; the values are
    /// copied. Like <see cref="AddAdapter(string, AdapterConfig, Action?)"/> it does not become active by itself.
    /// </summary>
    public void AddAdapter(string adapterName, AdapterConfig config, IReadOnlyDictionary<string, Tensor> tensors, bool allowNonFinite = false)
    {
        EnsureUsable();
        ValidateNewName(adapterName);
        ArgumentNullException.ThrowIfNull(tensors);
        config.Validate();
        AdapterFiles.Attach(this, adapterName, config, new AdapterFiles.MemorySource(tensors), allowNonFinite, $"the config of '{adapterName}' does not fit this model");
        UpdateTrainable(_active);
    }

    /// <summary>Copies of adapter <paramref name="adapterName"/>'s tensors by file key, as <see cref="Save"/> writes them
    /// (with <paramref name="asPlainDelta"/>, PiSSA/OLoRA in PEFT's converted form). Dispose them when done.</summary>
    public Dictionary<string, Tensor> AdapterTensors(string adapterName, bool asPlainDelta = false)
    {
        EnsureUsable();
        if (!_adapters.Any(a => a.Name == adapterName)) throw UnknownAdapter(adapterName);
        using var scope = NewDisposeScope();
        return AdapterFiles.Tensors(this, adapterName, asPlainDelta)
            .ToDictionary(p => p.Key, p => p.Value.detach().clone().DetachFromDisposeScope());
    }

    /// <summary>Loads a PEFT adapter directory (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>) as
    /// <paramref name="adapterName"/>. Everything is read and checked before the model changes; tensors holding NaN
    /// or infinite values are refused unless <paramref name="allowNonFinite"/>.</summary>
    public void LoadAdapter(string directory, string adapterName, bool trainable = false, bool allowNonFinite = false)
    {
        EnsureUsable();
        ValidateNewName(adapterName);
        AdapterFiles.Load(this, directory, adapterName, allowNonFinite);
        if (_active.Count == 0 || trainable) SetActiveAdapters(_active.Append(adapterName).Distinct().ToArray());
        if (!trainable) UpdateTrainable(trainableAdapters: _active.Where(a => a != adapterName).ToList());
    }

    internal Dictionary<string, AdapterModule> CreateAdapters(AdapterConfig config, IReadOnlyList<string> paths, bool initialize, ModelAdapter? modelAdapter,
                                                              IReadOnlyDictionary<string, LayerStatistics>? statistics = null)
    {
        var adapters = new Dictionary<string, AdapterModule>();
        try
        {
            foreach (var path in paths)
                adapters[path] = config.CreateAdapter(new AdapterContext(path, BaseLayerAt(path), initialize, modelAdapter, statistics?.GetValueOrDefault(path)));
        }
        catch
        {
            foreach (var a in adapters.Values) a.Dispose();
            throw;
        }
        return adapters;
    }

    internal Module<Tensor, Tensor> BaseLayerAt(string path) => ModuleSurgery.Get(Model, path) switch
    {
        AdapterLayer layer => layer.BaseLayer,
        ModulesToSaveWrapper wrapper => wrapper.OriginalModule,
        Module<Tensor, Tensor> module => module,
        var other => throw new ArgumentException($"'{path}' is a {other.GetType().Name}; adapters go into modules that map a Tensor to a Tensor."),
    };

    /// <summary>The paths of the modules named by <c>modules_to_save</c> (exact name or dotted suffix).</summary>
    internal List<string> ModulesToSavePaths(AdapterConfig config)
    {
        if (config.ModulesToSave is not { Count: > 0 } names) return [];
        var paths = TargetMatcher.AdaptableModules(Model).Select(m => m.Path)
            .Where(p => names.Any(n => p == n || p.EndsWith("." + n, StringComparison.Ordinal))).ToList();
        var missing = names.Where(n => !paths.Any(p => p == n || p.EndsWith("." + n, StringComparison.Ordinal))).ToList();
        if (missing.Count > 0)
            throw new ArgumentException($"modules_to_save names {string.Join(", ", missing.Select(m => $"'{m}'"))}, which {Model.GetName()} does not have.");
        return paths;
    }

    /// <summary>
    /// Puts prepared adapters into the model. Every swap is planned (and can fail) before the first one is made, so
    /// on failure the model is unchanged and the prepared adapters are freed. <paramref name="afterAttach"/> runs
    /// once everything is in place (loading copies values into the modules_to_save copies there).
    /// </summary>
    internal void Commit(string adapterName, AdapterConfig config, Dictionary<string, AdapterModule> adapters, ModelAdapter? modelAdapter, bool initialize,
                         Action<IReadOnlyDictionary<string, Module<Tensor, Tensor>>>? afterAttach = null)
    {
        var copies = new Dictionary<string, Module<Tensor, Tensor>>();
        var steps = new List<Action>();
        try
        {
            foreach (var (path, adapter) in adapters)
            {
                if (ModuleSurgery.Get(Model, path) is AdapterLayer existing)
                {
                    steps.Add(() => existing.Add(adapterName, adapter));
                    continue;
                }
                var baseLayer = BaseLayerAt(path);
                var replace = ModuleSurgery.PlanReplace(Model, path, typeof(AdapterLayer));
                steps.Add(() =>
                {
                    var layer = new AdapterLayer(path, baseLayer) { AdaptersDisabled = AdaptersDisabled };
                    replace(layer);
                    layer.Add(adapterName, adapter);
                });
            }
            foreach (var path in ModulesToSavePaths(config))
            {
                var module = ModuleSurgery.Get(Model, path);
                var original = BaseLayerAt(path);
                var copy = ModuleCloner.Clone(original, path);
                copies[path] = copy;
                if (module is ModulesToSaveWrapper wrapper)
                {
                    steps.Add(() => wrapper.AddCopy(adapterName, copy));
                    continue;
                }
                var replace = ModuleSurgery.PlanReplace(Model, path, typeof(ModulesToSaveWrapper));
                steps.Add(() =>
                {
                    var newWrapper = new ModulesToSaveWrapper(path, original) { Disabled = AdaptersDisabled };
                    replace(newWrapper);
                    newWrapper.AddCopy(adapterName, copy);
                });
            }
        }
        catch
        {
            foreach (var a in adapters.Values) a.Dispose();
            foreach (var c in copies.Values) c.Dispose();
            modelAdapter?.Dispose();
            throw;
        }

        if (modelAdapter is not null)
        {
            ModelAdapterDict.GetOrAdd(Model).Add(adapterName, modelAdapter);
            modelAdapter.train(Model.training);
        }
        foreach (var step in steps) step();
        // New modules start in training mode; follow the base layer instead (a model in eval() stays in eval()).
        foreach (var (path, adapter) in adapters) adapter.train(BaseLayerAt(path).training);
        foreach (var (path, copy) in copies) copy.train(BaseLayerAt(path).training);
        if (initialize)
            foreach (var (path, adapter) in adapters) adapter.OnAttached(BaseLayerAt(path));
        _adapters.Add((adapterName, modelAdapter?.Complete(config) ?? config));
        afterAttach?.Invoke(copies);
        SyncLayers();
    }

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

    /// <summary>Removes an adapter from every layer; layers left without adapters get their original module back.</summary>
    public void DeleteAdapter(string adapterName)
    {
        EnsureUsable();
        if (!_adapters.Any(a => a.Name == adapterName)) throw UnknownAdapter(adapterName);
        if (_adapters.FirstOrDefault(a => a.Config.DependsOn.Contains(adapterName)) is { Name: not null } user)
            throw new InvalidOperationException($"Adapter '{user.Name}' ({user.Config.MethodName}) uses '{adapterName}'; delete '{user.Name}' first.");
        var layers = Layers.Where(l => l.Contains(adapterName)).ToList();
        if (layers.FirstOrDefault(l => l.MergedAdapters.Contains(adapterName)) is { } merged)
            throw new InvalidOperationException($"Adapter '{adapterName}' is merged into '{merged.Path}'; call Unmerge() before deleting it.");

        foreach (var layer in layers)
        {
            layer.Remove(adapterName);
            if (layer.AdapterNames.Count == 0) Unwrap(layer.Path, layer, layer.DetachBaseAndDispose);
        }
        foreach (var wrapper in SavedModules.Where(w => w.Contains(adapterName)))
        {
            wrapper.RemoveCopy(adapterName);
            if (wrapper.AdapterNames.Count == 0) Unwrap(wrapper.Path, wrapper, wrapper.UnwrapAndDispose);
        }
        RemoveModelAdapter(adapterName);
        _adapters.RemoveAll(a => a.Name == adapterName);
        _active.Remove(adapterName);
        _averageWeights = null;
        if (_active.Count == 0 && _adapters.Count > 0) _active.Add(_adapters[0].Name);
        SyncLayers();
    }

    void RemoveModelAdapter(string adapterName)
    {
        if (ModelAdapterDict.Find(Model) is not { } dict || !dict.Contains(adapterName)) return;
        var adapter = dict[adapterName];
        adapter.SetOn(Model, false);
        dict.Remove(adapterName).Dispose();
        ModelAdapterDict.RemoveFrom(Model);
    }

    void Unwrap(string path, Module wrapper, Func<Module<Tensor, Tensor>> detach)
    {
        var replace = ModuleSurgery.PlanReplace(Model, path, typeof(Module<Tensor, Tensor>));
        replace(detach());
    }

    /// <summary>Makes every adapter layer return exactly the base output (merged adapters are unmerged on the next
    /// forward pass, as in PEFT). Dispose the result, or call <see cref="EnableAdapters"/>, to turn them back on.</summary>
    public IDisposable DisableAdapters()
    {
        EnsureUsable();
        SetDisabled(true);
        return new Scope(EnableAdapters);
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
    public IDisposable UseAdapterPerRow(IReadOnlyList<string> adapterNames) => Use(new ForwardContext { AdapterNames = adapterNames });

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
        return new Scope(() =>
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

    /// <summary>Trainable and total parameter counts and bytes, and one row per adapter per layer.</summary>
    public ParameterReport ParameterReport()
    {
        long trainable = 0, all = 0, trainableBytes = 0, allBytes = 0;
        foreach (var (_, p) in Model.named_parameters())
        {
            long bytes = p.numel() * p.ElementSize;
            all += p.numel();
            allBytes += bytes;
            if (p.requires_grad)
            {
                trainable += p.numel();
                trainableBytes += bytes;
            }
        }
        var rows = new List<AdapterLayerInfo>();
        foreach (var layer in Layers)
        {
            var weight = layer.BaseLayer.get_parameter("weight");
            foreach (var name in layer.AdapterNames)
            {
                var adapter = layer[name];
                long limit = weight is { } w && w.dim() == 2 ? Math.Min(w.shape[0], w.shape[1]) : long.MaxValue;
                var note = adapter.Rank > limit ? $"rank {adapter.Rank} is above min(out, in) = {limit}: more parameters, no more expressiveness" : null;
                rows.Add(new AdapterLayerInfo(layer.Path, layer.BaseLayer.GetType().Name, weight?.shape ?? [], name, adapter.MethodName,
                    adapter.Rank, adapter.parameters().Sum(p => p.numel()), layer.ActiveAdapters.Contains(name), layer.MergedAdapters.Contains(name), note));
            }
        }
        foreach (var wrapper in SavedModules)
            foreach (var name in wrapper.AdapterNames)
                rows.Add(new AdapterLayerInfo(wrapper.Path, wrapper.OriginalModule.GetType().Name, wrapper.OriginalModule.get_parameter("weight")?.shape ?? [],
                    name, "modules_to_save", null, wrapper[name].parameters().Sum(p => p.numel()), wrapper.ActiveAdapter == name, false));
        foreach (var (name, modelAdapter) in ModelAdapters)
            rows.Add(new AdapterLayerInfo($"{ModelAdapterDict.RegisteredName}.{name}", "(model)", [], name, modelAdapter.MethodName, null,
                modelAdapter.parameters().Sum(p => p.numel()), _active.Contains(name), false));
        return new ParameterReport(trainable, all, trainableBytes, allBytes, rows, _active.ToList(), AdaptersDisabled);
    }

    /// <summary>Saves adapters in Hugging Face PEFT's layout: <c>default</c> in <paramref name="directory"/>, any other
    /// adapter in a subfolder named after it. Each file is written to a temporary name and then moved over the old
    /// one. PiSSA/OLoRA adapters are written as the equivalent plain LoRA on the original weights (PEFT's
    /// conversion) unless <paramref name="asPlainDelta"/> is false.</summary>
    public void Save(string directory, IEnumerable<string>? adapterNames = null, bool asPlainDelta = true)
    {
        EnsureUsable();
        foreach (var name in adapterNames ?? AdapterNames)
        {
            if (!_adapters.Any(a => a.Name == name)) throw UnknownAdapter(name);
            AdapterFiles.Save(this, name, name == DefaultAdapterName ? directory : Path.Combine(directory, name), asPlainDelta);
        }
    }

    void ValidateNewName(string adapterName)
    {
        if (string.IsNullOrWhiteSpace(adapterName) || adapterName.Contains('.') || adapterName.Contains('/') || adapterName == AdapterLayer.BaseOnly)
            throw new ArgumentException($"'{adapterName}' cannot name an adapter: use a non-empty name without '.', '/', and other than '{AdapterLayer.BaseOnly}'.", nameof(adapterName));
        if (_adapters.Any(a => a.Name == adapterName))
            throw new ArgumentException($"An adapter named '{adapterName}' already exists; delete it first or choose another name.", nameof(adapterName));
    }

    void EnsureUsable()
    {
        if (_unloaded) throw new InvalidOperationException("The adapters were unloaded from this model (MergeAndUnload/Unload); make a new PeftModel to add adapters again.");
    }

    ArgumentException UnknownAdapter(string name) =>
        new($"No adapter named '{name}'. Adapters: {(_adapters.Count == 0 ? "none" : string.Join(", ", AdapterNames))}.");

    sealed class Scope(Action onDispose) : IDisposable
    {
        Action? _onDispose = onDispose;

        public void Dispose()
        {
            _onDispose?.Invoke();
            _onDispose = null;
        }
    }
}

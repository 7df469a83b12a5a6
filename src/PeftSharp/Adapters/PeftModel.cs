using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// A model with adapters: the user's module, changed in place (target layers wrapped in <see cref="AdapterLayer"/>,
/// <c>modules_to_save</c> in <see cref="ModulesToSaveWrapper"/>), plus the bookkeeping of named adapters, as Hugging
/// Face PEFT's <c>PeftModel</c>: add, activate (one or several, summed), delete, disable, merge / unmerge /
/// merge-and-unload, a trainable-parameter report, per-row adapter choice, and save/load in PEFT's file layout.
/// The base stays frozen; the active adapters train. One file per job: this one puts adapters in and takes them out
/// (injection, one path shared with loading); <c>PeftModel.Activation.cs</c> which adapters run, how they combine, what
/// trains and the forward context; <c>PeftModel.Merging.cs</c>; <c>PeftModel.Files.cs</c> (files and tensors);
/// <c>PeftModel.Reports.cs</c>.
/// </summary>
public sealed partial class PeftModel
{
    public const string DefaultAdapterName = "default";

    readonly List<(string Name, AdapterConfig Config)> _adapters = [];

    readonly List<string> _active = [];

    bool _unloaded;

    // What a method keeps per adapter while training (AdaLoRA's allocator), made on first use, freed with the adapter.
    readonly Dictionary<string, object> _methodState = [];

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
    /// statistics of their targets' inputs (<see cref="AdapterConfig.NeedsCalibration"/>), or runs it and calls backward on
    /// each batch's loss for methods that allocate from gradients (<see cref="AdapterConfig.NeedsGradientCalibration"/>,
    /// SPT); others ignore it.</remarks>
    public TargetSelection AddAdapter(string adapterName, AdapterConfig config, Action? calibrate = null)
    {
        EnsureUsable();
        ValidateNewName(adapterName);
        config.Validate();
        CheckDependencies(config);
        var selection = SelectTargets(Model, config);
        if (config.NeedsGradientCalibration)
        {
            config = config.AllocateFromGradients(Model, selection.Matched, calibrate ?? throw new ArgumentException(
                $"{config.MethodName} decides what each target gets from the task's gradients: pass a calibration action that runs the model on a few batches " +
                "and calls backward() on each batch's loss, e.g. AddAdapter(name, config, calibrate: () => { foreach (var (x, y) in batches) loss(model.call(x), y).backward(); }).",
                nameof(calibrate)));
            config.Validate();
        }
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
        if (_methodState.Remove(adapterName, out var state)) (state as IDisposable)?.Dispose();
        _adapters.RemoveAll(a => a.Name == adapterName);
        _active.Remove(adapterName);
        _averageWeights = null;
        if (_active.Count == 0 && _adapters.Count > 0) _active.Add(_adapters[0].Name);
        SyncLayers();
    }

    /// <summary>The training state a method keeps for <paramref name="adapterName"/> (e.g. AdaLoRA's allocator), made by
    /// <paramref name="create"/> on first use; disposed when the adapter is deleted.</summary>
    internal T MethodState<T>(string adapterName, Func<T> create) where T : class
    {
        if (!_adapters.Any(a => a.Name == adapterName)) throw UnknownAdapter(adapterName);
        if (_methodState.TryGetValue(adapterName, out var state)) return (T)state;
        var created = create();
        _methodState[adapterName] = created;
        return created;
    }

    /// <summary>The training state of <paramref name="adapterName"/> if a method made one, else null.</summary>
    internal T? FindMethodState<T>(string adapterName) where T : class => _methodState.GetValueOrDefault(adapterName) as T;

    /// <summary>Replaces an adapter's config by one of the same method that differs only in what training decided
    /// (AdaLoRA's rank_pattern) or what a hot swap brought (its alpha), so that a save writes it.</summary>
    internal void ReplaceConfig(string adapterName, AdapterConfig config)
    {
        int index = _adapters.FindIndex(a => a.Name == adapterName);
        if (index < 0) throw UnknownAdapter(adapterName);
        if (config.GetType() != _adapters[index].Config.GetType())
            throw new ArgumentException($"Adapter '{adapterName}' is {_adapters[index].Config.MethodName}; its config cannot become a {config.GetType().Name}.", nameof(config));
        _adapters[index] = (adapterName, config);
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
}

using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// PEFT's <c>modules_to_save</c>: keeps the original module frozen as <c>original_module</c> and one trainable copy per
/// adapter; the forward pass uses the copy of the first active adapter that has one, else the original.
/// </summary>
public sealed class ModulesToSaveWrapper : Module<Tensor, Tensor>
{
    readonly Module<Tensor, Tensor> _original;
    readonly CopyDict _copies = new();

    internal ModulesToSaveWrapper(string path, Module<Tensor, Tensor> original) : base(nameof(ModulesToSaveWrapper))
    {
        Path = path;
        _original = original;
        register_module("original_module", _original);
        register_module("modules_to_save", _copies);
        ModuleSurgery.CopyDeviceRecord(original, this);
    }

    public string Path { get; }

    public Module<Tensor, Tensor> OriginalModule => _original;

    public IReadOnlyList<string> AdapterNames => _copies.Names;

    public Module<Tensor, Tensor> this[string adapterName] => _copies[adapterName];

    public bool Contains(string adapterName) => _copies.Names.Contains(adapterName);

    /// <summary>The adapter whose copy is used, or null for the original module.</summary>
    public string? ActiveAdapter { get; private set; }

    internal bool Disabled { get; set; }

    /// <summary>The forward context in force (set inside <see cref="PeftModel.Use"/>), or null.</summary>
    internal ForwardContext? Context { get; set; }

    internal void AddCopy(string adapterName, Module<Tensor, Tensor> copy) => _copies.Add(adapterName, copy);

    internal void RemoveCopy(string adapterName)
    {
        _copies.Remove(adapterName).Dispose();
        if (ActiveAdapter == adapterName) ActiveAdapter = null;
    }

    internal void SetActive(IReadOnlyList<string> adapterNames) =>
        ActiveAdapter = adapterNames.FirstOrDefault(_copies.Names.Contains);

    public override Tensor forward(Tensor x)
    {
        if (Disabled) return _original.call(x);
        if (Context?.AdapterNames is not { } rowNames) return ActiveAdapter is null ? _original.call(x) : _copies[ActiveAdapter].call(x);

        // Per-row: each row through its adapter's copy, or the original for the base or adapters without a copy.
        using var scope = NewDisposeScope();
        var result = _original.call(x).clone();
        foreach (var name in rowNames.Distinct().Where(Contains))
        {
            var rows = Enumerable.Range(0, rowNames.Count).Where(i => rowNames[i] == name).Select(i => (long)i).ToArray();
            var index = tensor(rows, dtype: ScalarType.Int64, device: x.device);
            result = result.index_copy(0, index, _copies[name].call(x.index_select(0, index)));
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Hands back the module the model should keep after unwrapping: the active copy (the trained one) or
    /// the original; everything else is freed.</summary>
    internal Module<Tensor, Tensor> UnwrapAndDispose()
    {
        Module<Tensor, Tensor> keep = ActiveAdapter is null ? _original : _copies.Remove(ActiveAdapter);
        if (keep == _original) _internal_submodules.Remove("original_module");
        Dispose();
        return keep;
    }

    sealed class CopyDict : Module
    {
        readonly List<string> _names = [];

        public CopyDict() : base("modules_to_save") { }

        public IReadOnlyList<string> Names => _names;

        public Module<Tensor, Tensor> this[string name] => (Module<Tensor, Tensor>)_internal_submodules[name];

        public void Add(string name, Module<Tensor, Tensor> module)
        {
            register_module(name, module);
            _names.Add(name);
        }

        public Module<Tensor, Tensor> Remove(string name)
        {
            var module = this[name];
            _internal_submodules.Remove(name);
            _names.Remove(name);
            return module;
        }
    }
}

/// <summary>Copies a module with its parameter values (TorchSharp has no deepcopy).</summary>
public static class ModuleCloner
{
    public static Module<Tensor, Tensor> Clone(Module<Tensor, Tensor> module, string path)
    {
        Module<Tensor, Tensor> copy = module switch
        {
            TorchSharp.Modules.Linear l => Linear(l.in_features, l.out_features, hasBias: l.bias is not null, device: l.weight!.device, dtype: l.weight.dtype),
            // get_parameter: Embedding.weight makes a new tensor handle on every read.
            TorchSharp.Modules.Embedding e when e.get_parameter("weight") is { } w => Embedding(w.shape[0], w.shape[1], device: w.device, dtype: w.dtype),
            TorchSharp.Modules.LayerNorm n => LayerNorm(n.normalized_shape, n.eps, n.elementwise_affine, device: n.weight?.device, dtype: n.weight?.dtype),
            ICloneableModule c => c.CloneModule(),
            _ => throw new NotSupportedException(
                $"modules_to_save: cannot copy '{path}', a {module.GetType().Name}. Supported: Linear, Embedding, LayerNorm, " +
                "or a module implementing PeftSharp.Adapters.ICloneableModule.")
        };
        using (no_grad())
        {
            var source = module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, parameter) in copy.named_parameters())
                parameter.copy_(source[name]);
        }
        return copy;
    }
}

/// <summary>A module that can make a fresh instance of itself with the same shapes (values are copied by the caller).</summary>
public interface ICloneableModule
{
    Module<Tensor, Tensor> CloneModule();
}

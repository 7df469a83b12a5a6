using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

// PeftModel: adapters to and from files and tensors.
public sealed partial class PeftModel
{
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
}

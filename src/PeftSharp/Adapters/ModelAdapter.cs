using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// The part of an adapter that belongs to the model as a whole rather than to one layer: tensors shared by all its
/// layers (Compacter's PHM rule, the coupling of an invertible adapter used at the embeddings and again before a tied
/// output head, ScaLearn++'s layer-shared scales), or an adapter that plugs into a model hook instead of wrapping
/// layers (prompt and prefix tuning). A config makes one in <see cref="AdapterConfig.CreateModelAdapter"/>; the
/// <see cref="PeftModel"/> registers it under the model root as <c>model_adapters.&lt;adapter name&gt;</c> (so its
/// parameters are the model's, train, move with <c>.to(device)</c> and appear in <c>state_dict</c>), trains it while
/// its adapter is active, and calls <see cref="Activate"/> / <see cref="Deactivate"/> as the adapter is switched on
/// and off (active and not disabled).
/// </summary>
public abstract class ModelAdapter : Module
{
    protected ModelAdapter(string name) : base(name) { }

    /// <summary>The method's name, e.g. "prompt-tuning".</summary>
    public abstract string MethodName { get; }

    /// <summary>False for adapters that act through a model hook on the whole batch (prompts, prefixes): a batch
    /// cannot then use a different adapter per row.</summary>
    public virtual bool SupportsPerRow => true;

    /// <summary>Null when the adapter's layers decide whether it merges; otherwise why the whole adapter cannot be
    /// folded into the weights (prompt and prefix tuning add inputs, not weights).</summary>
    public virtual string? CannotMergeReason => null;

    /// <summary>Whether the adapter is switched on (set by <see cref="PeftModel"/>).</summary>
    public bool IsOn { get; private set; }

    internal void SetOn(Module model, bool on)
    {
        if (on == IsOn) return;
        if (on) Activate(model);
        else Deactivate(model);
        IsOn = on;
    }

    /// <summary>Plugs the adapter into the model's hooks (e.g. <c>BertModel.AttentionPrefix</c>). Called when the
    /// adapter becomes active and adapters are enabled.</summary>
    protected virtual void Activate(Module model) { }

    /// <summary>Takes the adapter out of the model's hooks again.</summary>
    protected virtual void Deactivate(Module model) { }

    /// <summary>The adapter's config with what the model decides filled in (prompt tuning's <c>token_dim</c>,
    /// <c>num_layers</c>, ...), as it is kept and saved. By default unchanged.</summary>
    public virtual AdapterConfig Complete(AdapterConfig config) => config;

    /// <summary>The tensors of <c>adapter_model.safetensors</c> that load into this module, by their full key, with the
    /// parameter each goes into. By default <c>base_model.model.&lt;parameter name&gt;</c> for every parameter.</summary>
    public virtual IEnumerable<(string Key, Tensor Parameter)> FileParameters() =>
        named_parameters().Select(p => (AdapterFiles.KeyPrefix + p.name, (Tensor)p.parameter));

    /// <summary>The tensors written to the file by key; by default <see cref="FileParameters"/>. Prefix tuning with an
    /// MLP writes the MLP's output instead, as PEFT does.</summary>
    public virtual IEnumerable<(string Key, Tensor Value)> TensorsForFile() => FileParameters();
}

/// <summary>The model-level adapters, registered under the model root as <c>model_adapters</c> (keys
/// <c>model_adapters.&lt;adapter name&gt;.…</c>); removed from the model with the last of them.</summary>
internal sealed class ModelAdapterDict : Module
{
    public const string RegisteredName = "model_adapters";

    readonly List<string> _names = [];

    public ModelAdapterDict() : base(RegisteredName) { }

    public IReadOnlyList<string> Names => _names;

    public bool Contains(string name) => _names.Contains(name);

    public ModelAdapter this[string name] => (ModelAdapter)_internal_submodules[name];

    public void Add(string name, ModelAdapter adapter)
    {
        register_module(name, adapter);
        _names.Add(name);
    }

    public ModelAdapter Remove(string name)
    {
        var adapter = this[name];
        _internal_submodules.Remove(name);
        _names.Remove(name);
        return adapter;
    }

    /// <summary>The container registered on <paramref name="model"/>, or null.</summary>
    public static ModelAdapterDict? Find(Module model) =>
        model.named_children().FirstOrDefault(c => c.name == RegisteredName).module as ModelAdapterDict;

    /// <summary>The container on <paramref name="model"/>, registered first when missing.</summary>
    public static ModelAdapterDict GetOrAdd(Module model)
    {
        if (Find(model) is { } existing) return existing;
        var dict = new ModelAdapterDict();
        var parameter = model.parameters().FirstOrDefault();
        if (parameter is not null) dict.to(parameter.device);
        model.register_module(RegisteredName, dict);
        return dict;
    }

    /// <summary>Unregisters the container from <paramref name="model"/> (when it holds nothing).</summary>
    public static void RemoveFrom(Module model)
    {
        var submodules = (TorchSharp.Utils.OrderedDict<string, Module>)typeof(Module)
            .GetField("_internal_submodules", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!.GetValue(model)!;
        if (submodules.ContainsKey(RegisteredName) && submodules[RegisteredName] is ModelAdapterDict { Names.Count: 0 } dict)
        {
            submodules.Remove(RegisteredName);
            dict.Dispose();
        }
    }
}

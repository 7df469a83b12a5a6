using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// What every adapter method shares: which modules it goes into (Hugging Face PEFT's matching rules, see
/// <see cref="TargetMatcher"/>), which to leave out, which layers, and which whole modules to train and save
/// alongside (<c>modules_to_save</c>). A method's config is a sealed record that adds its hyperparameters,
/// validates them in <see cref="Validate"/> and creates its per-layer tensors in <c>CreateAdapter</c>.
/// </summary>
public abstract record AdapterConfig
{
    /// <summary>PEFT <c>target_modules</c>.</summary>
    public TargetModules? TargetModules { get; init; }

    /// <summary>PEFT <c>exclude_modules</c>: applied after the targets.</summary>
    public TargetModules? ExcludeModules { get; init; }

    /// <summary>PEFT <c>layers_to_transform</c>: keep only these layer indices (list targets only, as in PEFT).</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>PEFT <c>layers_pattern</c>: the name before the layer index, e.g. "layer" or "layers".</summary>
    public IReadOnlyList<string>? LayersPattern { get; init; }

    /// <summary>PEFT <c>modules_to_save</c>: modules (e.g. a classifier head) trained in full and saved with the
    /// adapter; matched exactly or as a dotted suffix.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>PEFT <c>task_type</c> (e.g. "SEQ_CLS", "CAUSAL_LM"); kept for the file, not used by the engine.</summary>
    public string? TaskType { get; init; }

    /// <summary>PEFT <c>base_model_name_or_path</c>: which base the adapter was trained on, for the file.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>The method's name in this library and in the method list, e.g. "lora".</summary>
    public abstract string MethodName { get; }

    /// <summary>PEFT's <c>peft_type</c> value in <c>adapter_config.json</c>, e.g. "LORA".</summary>
    public abstract string PeftType { get; }

    /// <summary>The layer types the method can adapt, for error messages.</summary>
    public abstract string SupportedLayerTypes { get; }

    /// <summary>Whether <paramref name="module"/> is a layer type this method can adapt.</summary>
    public abstract bool CanHold(Module module);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> / <see cref="ArgumentException"/> naming the field
    /// that is wrong and what would be right.</summary>
    public virtual void Validate()
    {
        if (TargetModules is null)
            throw new ArgumentException("TargetModules (target_modules) is required: e.g. [\"q\", \"v\"], a regex, or \"all-linear\".", nameof(TargetModules));
        if (LayersToTransform is { } layers && layers.Any(i => i < 0))
            throw new ArgumentOutOfRangeException(nameof(LayersToTransform), "layers_to_transform holds layer indices, which are 0 or more.");
        if (LayersPattern is { Count: > 0 } && (LayersToTransform is null || LayersToTransform.Count == 0))
            throw new ArgumentException("layers_pattern only makes sense with layers_to_transform: set both, or neither.", nameof(LayersPattern));
        if (ModulesToSave is { } save && save.Any(string.IsNullOrWhiteSpace))
            throw new ArgumentException("modules_to_save holds module names such as \"classifier\"; an entry is empty.", nameof(ModulesToSave));
    }

    /// <summary>
    /// Creates this method's tensors for the target module at <paramref name="path"/>, on the base weight's device
    /// and dtype. With <paramref name="initialize"/> false the values are about to be loaded from a file, so any
    /// initialisation that reads or changes the base weights (PiSSA, OLoRA) must not run.
    /// </summary>
    public abstract AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize);

    /// <summary>As <see cref="CreateAdapter(string, Module{Tensor, Tensor}, bool)"/>, for methods whose layers use the
    /// adapter's <see cref="ModelAdapter"/> (tensors shared across layers). By default the model adapter is not used.</summary>
    public virtual AdapterModule CreateAdapter(string path, Module<Tensor, Tensor> baseLayer, bool initialize, ModelAdapter? modelAdapter) =>
        CreateAdapter(path, baseLayer, initialize);

    /// <summary>
    /// The adapter's model-level part, made before its layers (see <see cref="ModelAdapter"/>), or null for methods that
    /// live in their layers only (the default). <paramref name="targetPaths"/> are the layers it will go into (empty for
    /// methods that do not target layers). Throws <see cref="ArgumentException"/> when the model cannot take it.
    /// </summary>
    public virtual ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize) => null;

    /// <summary>Other adapters of the same model this one uses (ScaLearn's and AdapterFusion's source adapters): they
    /// must exist when it is added or loaded, and cannot be deleted before it.</summary>
    public virtual IReadOnlyList<string> DependsOn => [];

    /// <summary>False for methods that act on the model as a whole through a <see cref="ModelAdapter"/> and wrap no
    /// layer (prompt and prefix tuning): they need no <see cref="TargetModules"/>.</summary>
    public virtual bool TargetsLayers => true;

    /// <summary>The parameters of the base model (dotted paths as in <c>named_parameters()</c>) that train and are
    /// saved with this adapter besides its own tensors, e.g. biases for LoRA's <c>bias="all"</c>.</summary>
    public virtual IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => [];

    /// <summary>This config as PEFT's <c>adapter_config.json</c> object. With <paramref name="asPlainDelta"/> a
    /// method whose initialisation changed the base writes the equivalent plain config (see
    /// <see cref="AdapterModule.TensorsForFile"/>).</summary>
    public abstract System.Text.Json.Nodes.JsonObject ToPeftJson(bool asPlainDelta = true);
}

using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.IO;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// What every adapter method shares: which modules it goes into (Hugging Face PEFT's matching rules, see
/// <see cref="TargetMatcher"/>), which to leave out, which layers, and which whole modules to train and save
/// alongside (<c>modules_to_save</c>). A method's config is a sealed record that declares its hyperparameters once, as
/// properties with <c>[JsonPropertyName]</c> (the PEFT field) and <c>[Option]</c> (option name, help, range): the file,
/// option binding, range checks, completions and listings all come from that (<see cref="ConfigJson"/>,
/// <see cref="ConfigOptions"/>). It adds cross-field checks in <see cref="Validate"/> and creates its per-layer tensors
/// in <see cref="CreateAdapter"/>.
/// </summary>
public abstract record AdapterConfig
{
    /// <summary>PEFT <c>target_modules</c>.</summary>
    [JsonPropertyName("target_modules"), JsonConverter(typeof(TargetModulesJsonConverter))]
    public TargetModules? TargetModules { get; init; }

    /// <summary>PEFT <c>exclude_modules</c>: applied after the targets.</summary>
    [JsonPropertyName("exclude_modules"), JsonConverter(typeof(TargetModulesJsonConverter))]
    public TargetModules? ExcludeModules { get; init; }

    /// <summary>PEFT <c>layers_to_transform</c>: keep only these layer indices (list targets only, as in PEFT).</summary>
    [JsonPropertyName("layers_to_transform"), JsonConverter(typeof(IntOrListJsonConverter))]
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>PEFT <c>layers_pattern</c>: the name before the layer index, e.g. "layer" or "layers".</summary>
    [JsonPropertyName("layers_pattern"), JsonConverter(typeof(StringOrListJsonConverter))]
    public IReadOnlyList<string>? LayersPattern { get; init; }

    /// <summary>PEFT <c>modules_to_save</c>: modules (e.g. a classifier head) trained in full and saved with the
    /// adapter; matched exactly or as a dotted suffix.</summary>
    [JsonPropertyName("modules_to_save")]
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>PEFT <c>task_type</c> (e.g. "SEQ_CLS", "CAUSAL_LM"); kept for the file, not used by the engine.</summary>
    [JsonPropertyName("task_type")]
    public string? TaskType { get; init; }

    /// <summary>PEFT <c>base_model_name_or_path</c>: which base the adapter was trained on, for the file.</summary>
    [JsonPropertyName("base_model_name_or_path")]
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>The method's name in this library and in the method list, e.g. "lora".</summary>
    public abstract string MethodName { get; }

    /// <summary>PEFT's <c>peft_type</c> value in <c>adapter_config.json</c>, e.g. "LORA".</summary>
    public abstract string PeftType { get; }

    /// <summary>Which variant of its <see cref="PeftType"/> this config is, for summaries and inspection (e.g. "dora",
    /// "pissa", "compacter"); by default <see cref="MethodName"/>.</summary>
    public virtual string Variant => MethodName;

    /// <summary>The layer types the method can adapt, for error messages.</summary>
    public abstract string SupportedLayerTypes { get; }

    /// <summary>Whether <paramref name="module"/> is a layer type this method can adapt.</summary>
    public abstract bool CanHold(Module module);

    /// <summary>Whether adapters of this config fold into the base weights (merge, merge-and-unload).</summary>
    public virtual bool Merges => false;

    /// <summary>
    /// True when the initialisation rewrites the base weights (PiSSA, OLoRA keep a residual in the base). The engine then
    /// saves the equivalent plain adapter (<see cref="PlainEquivalent"/>, PEFT's conversion) unless asked not to, and,
    /// when a file written without that conversion is loaded, runs the initialisation again on the base before the
    /// file's values go in, as PEFT does.
    /// </summary>
    public virtual bool RewritesBase => false;

    /// <summary>The config of the plain adapter that gives the same model on the <em>original</em> base weights (for a
    /// method that <see cref="RewritesBase"/>); the config itself otherwise.</summary>
    public virtual AdapterConfig PlainEquivalent() => this;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> / <see cref="ArgumentException"/> naming the field
    /// that is wrong and what would be right. Declared ranges are checked here; methods add cross-field rules.</summary>
    public virtual void Validate()
    {
        if (TargetsLayers && TargetModules is null)
            throw new ArgumentException("TargetModules (target_modules) is required: e.g. [\"q\", \"v\"], a regex, or \"all-linear\".", nameof(TargetModules));
        if (LayersToTransform is { } layers && layers.Any(i => i < 0))
            throw new ArgumentOutOfRangeException(nameof(LayersToTransform), "layers_to_transform holds layer indices, which are 0 or more.");
        if (LayersPattern is { Count: > 0 } && (LayersToTransform is null || LayersToTransform.Count == 0))
            throw new ArgumentException("layers_pattern only makes sense with layers_to_transform: set both, or neither.", nameof(LayersPattern));
        if (ModulesToSave is { } save && save.Any(string.IsNullOrWhiteSpace))
            throw new ArgumentException("modules_to_save holds module names such as \"classifier\"; an entry is empty.", nameof(ModulesToSave));
        ConfigOptions.ValidateRanges(this);
    }

    /// <summary>
    /// Creates this method's tensors for one target (<see cref="AdapterContext.Path"/>), on the base weight's device and
    /// dtype. With <see cref="AdapterContext.Initialize"/> false the values are about to be loaded from a file, so an
    /// initialisation that reads or changes the base weights must not run.
    /// </summary>
    public abstract AdapterModule CreateAdapter(AdapterContext context);

    /// <summary>
    /// The adapter's model-level part, made before its layers (see <see cref="ModelAdapter"/>), or null for methods that
    /// live in their layers only (the default). <paramref name="targetPaths"/> are the layers it will go into (empty for
    /// methods that do not target layers). Throws <see cref="ArgumentException"/> when the model cannot take it.
    /// </summary>
    public virtual ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize) => null;

    /// <summary>True when <see cref="CreateAdapter"/> needs statistics of each target's inputs
    /// (<see cref="AdapterContext.Calibration"/>): the caller then passes batches to run through the model first.</summary>
    public virtual bool NeedsCalibration => false;

    /// <summary>True when the method decides what each target gets from the gradients of the task loss on calibration
    /// batches (SPT): <see cref="PeftModel.AddAdapter(string, AdapterConfig, Action?)"/> then calls
    /// <see cref="AllocateFromGradients"/> first, with the caller's action that runs the model and calls backward on
    /// each batch's loss.</summary>
    public virtual bool NeedsGradientCalibration => false;

    /// <summary>Measures what the method needs (e.g. <see cref="Sensitivity.Measure"/> over <paramref name="targetPaths"/>)
    /// and returns the config with its decision written in, so that the layers are made from it and a saved file
    /// reloads it without data. Called only when <see cref="NeedsGradientCalibration"/>.</summary>
    public virtual AdapterConfig AllocateFromGradients(Module model, IReadOnlyList<string> targetPaths, Action calibrate) => this;

    /// <summary>Other adapters of the same model this one uses (ScaLearn's and AdapterFusion's source adapters): they
    /// must exist when it is added or loaded, and cannot be deleted before it.</summary>
    public virtual IReadOnlyList<string> DependsOn => [];

    /// <summary>False for methods that act on the model as a whole through a <see cref="ModelAdapter"/> and wrap no
    /// layer (prompt and prefix tuning): they need no <see cref="TargetModules"/>.</summary>
    public virtual bool TargetsLayers => true;

    /// <summary>The parameters of the base model (dotted paths as in <c>named_parameters()</c>) that train and are
    /// saved with this adapter besides its own tensors, e.g. biases for LoRA's <c>bias="all"</c>.</summary>
    public virtual IEnumerable<string> TrainableBaseParameters(IEnumerable<string> parameterPaths, IReadOnlyList<string> targetPaths) => [];

    /// <summary>
    /// For methods that act during training besides their forward pass (AdaLoRA's rank allocation and orthogonality
    /// regulariser): called by <see cref="Training.Trainer"/>'s <c>Fit(PeftModel, ...)</c> for each active adapter before
    /// the first step, to add loss terms and step hooks to <paramref name="trainer"/>; the result is disposed after the
    /// run to take them out. Null (the default) for methods that need nothing.
    /// </summary>
    public virtual IDisposable? AttachToTraining(PeftModel peft, string adapterName, Training.Trainer trainer) => null;

    // ---- the file ----

    /// <summary>This config as PEFT's <c>adapter_config.json</c> object. With <paramref name="asPlainDelta"/> a
    /// method that <see cref="RewritesBase"/> writes its <see cref="PlainEquivalent"/> (see
    /// <see cref="AdapterModule.TensorsForFile"/>).</summary>
    public JsonObject ToPeftJson(bool asPlainDelta = true) => ConfigJson.Write(asPlainDelta && RewritesBase ? PlainEquivalent() : this);

    /// <summary>Fields of this base record that the method's PEFT config does not have, left out of its file so that
    /// PEFT reads it without warnings (e.g. (IA)³ has no <c>layers_to_transform</c>).</summary>
    protected internal virtual IEnumerable<string> OmittedCommonFields => [];

    /// <summary>Adds what the file holds besides the declared hyperparameters: constants PEFT writes at their defaults,
    /// fields with a layout of their own.</summary>
    protected internal virtual void WriteFixedFields(JsonObject json) { }

    /// <summary>Reads what <see cref="WriteFixedFields"/> wrote (after the hyperparameters were read): checks constants,
    /// refuses features this library does not have, naming <paramref name="file"/> and the field
    /// (<see cref="AdapterConfigException"/>).</summary>
    protected internal virtual AdapterConfig ReadFixedFields(JsonObject json, string file) => this;

    /// <summary>Where a module path ends and this method's tensor name begins in a file key (<c>.lora_</c>,
    /// <c>.adapter_</c>, ...), so a directory can be read without a model (<see cref="AdapterInspection"/>). Keys
    /// without one are the adapter's model-level tensors.</summary>
    public virtual IReadOnlyList<string> FileTensorMarkers => [];

    /// <summary>Keys of the file that hold no module path at all (PEFT's <c>prompt_embeddings</c>).</summary>
    public virtual IReadOnlyList<string> ModelLevelKeys => [];

    /// <summary>Checks one module's tensors as a file holds them, adding what is inconsistent to
    /// <paramref name="problems"/>; returns the module's rank where the method has one.</summary>
    public virtual int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems) => null;

    // ---- options (see ConfigOptions) ----

    /// <summary>A copy of this config (a record's clone), for option binding.</summary>
    internal AdapterConfig Copy() => (AdapterConfig)GetType().GetMethod("<Clone>$")!.Invoke(this, null)!;

    /// <summary>After options were bound: a method can derive one value from another the user set (LoRA's alpha follows
    /// the rank when only the rank is given).</summary>
    protected internal virtual AdapterConfig AfterBinding(IReadOnlyDictionary<string, string> options) => this;

    /// <summary>How an option's default is shown when it is not the preset's value itself (e.g. "rank").</summary>
    protected internal virtual string? DefaultText(string option) => null;

    /// <summary>The values an option of a method-specific type takes, for help and completions.</summary>
    protected internal virtual IReadOnlyList<string> Choices(string option) => [];

    /// <summary>Parses an option value of a method-specific type (e.g. LoRA's init); null when the type is not one.</summary>
    protected internal virtual object? ParseOption(Type type, string text) => null;
}

/// <summary>What <see cref="AdapterConfig.CreateAdapter"/> gets for one target: the layer's path and base module,
/// whether to initialise (false: values come from a file next), the adapter's model-level part (tensors shared across
/// layers) and, for methods that need them, statistics of the layer's inputs from a calibration pass.</summary>
public sealed record AdapterContext(string Path, Module<Tensor, Tensor> BaseLayer, bool Initialize, ModelAdapter? ModelAdapter = null,
                                    LayerStatistics? Calibration = null);

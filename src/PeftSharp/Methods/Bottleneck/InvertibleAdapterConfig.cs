using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Bottleneck;

/// <summary>
/// The invertible adapter of MAD-X (Pfeiffer et al. 2020, "MAD-X", §3.2 and Eq. 3-4): a NICE coupling block (Dinh et al.
/// 2015) on the input embeddings, o1 = e1 + F(e2), o2 = e2 + G(o1), with F and G small bottleneck MLPs; its exact
/// inverse e2 = o2 − G(o1), e1 = o1 − F(e2) is applied to the last hidden states before a tied output embedding, so a
/// language adapter can reshape the shared vocabulary space for masked language modelling. <see cref="AdapterConfig.TargetModules"/>
/// names both places (e.g. BERT's <c>embeddings.LayerNorm</c> and the MLM transform's last module,
/// <c>cls.predictions.transform.LayerNorm</c>); those also in <see cref="InverseModules"/> get the inverse on what enters
/// the tied head: a Linear head's input, or a LayerNorm's output (right before a tied decoder that is a bare product). One coupling serves all of them (a
/// <see cref="ModelAdapter"/>, keys <c>base_model.model.invertible_adapter.F_down.weight</c>, ...). F's and G's output
/// layers start at 0, so the adapter is the identity at init (AdapterHub draws them at random). Saved with
/// <c>peft_type</c> "INVERTIBLE" (this library's layout).
/// </summary>
public sealed record InvertibleAdapterConfig : AdapterConfig
{
    /// <summary>The targets where the inverse applies (a Linear tied head: on its input; the LayerNorm before a bare tied
    /// decoder: on its output); must be targets.</summary>
    [JsonPropertyName("inverse_modules"), JsonConverter(typeof(TargetModulesJsonConverter))]
    [Option("inverse", "inverse_modules: comma-separated targets (the tied output head) whose input goes through the inverse")]
    public TargetModules? InverseModules { get; init; }

    /// <summary>AdapterHub <c>inv_adapter_reduction_factor</c>: F and G are (d/2 → d/2/r → d/2).</summary>
    [JsonPropertyName("inv_adapter_reduction_factor"), Option("reduction", "inv_adapter_reduction_factor: F and G are d/2 → d/2/reduction → d/2", Min = 0, MinExclusive = true, Max = 1e6)]
    public double ReductionFactor { get; init; } = 2;

    /// <summary>AdapterHub <c>non_linearity</c> of F and G.</summary>
    [JsonPropertyName("non_linearity"), Option("activation", "non_linearity of F and G")]
    public string NonLinearity { get; init; } = "relu";

    public override string MethodName => "invertible";

    public override string PeftType => "INVERTIBLE";

    public override string SupportedLayerTypes => "Embedding, LayerNorm, Linear (the embedding output); Linear (the tied head, inverse)";

    public override bool CanHold(Module module) => module is TorchSharp.Modules.Linear or TorchSharp.Modules.Embedding or TorchSharp.Modules.LayerNorm;

    public bool IsInverse(string path) => InverseModules is { } inverse && TargetMatcher.IsTarget(inverse, path);

    public override void Validate()
    {
        base.Validate();
        Activations.Validate(NonLinearity, nameof(NonLinearity));
    }

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        var modules = TargetMatcher.AdaptableModules(model).ToDictionary(m => m.Path, m => m.Module);
        var forward = targetPaths.Where(p => !IsInverse(p)).ToList();
        if (forward.Count == 0)
            throw new ArgumentException($"The invertible adapter needs a target for its forward coupling (the embedding output); target_modules only matched inverse modules: {string.Join(", ", targetPaths)}.");
        long width = Activations.Widths(modules[forward[0]], forward[0]).Out;
        foreach (var path in targetPaths)
        {
            var (inWidth, outWidth) = Activations.Widths(modules[path], path);
            // The inverse maps what enters the tied head: a Linear head's input, or a final LayerNorm's output.
            long seen = IsInverse(path) && modules[path] is not TorchSharp.Modules.LayerNorm ? inWidth : outWidth;
            if (seen != width)
                throw new ArgumentException($"The invertible adapter is {width} wide (from '{forward[0]}'), but '{path}' {(IsInverse(path) ? "takes" : "gives")} {seen}: one coupling must fit every target.");
        }
        var reference = modules[forward[0]].parameters().First();
        return new NiceCoupling(width, ReductionFactor, NonLinearity, reference.dtype, reference.device);
    }

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        new InvertibleAdapter(context.ModelAdapter as NiceCoupling
                              ?? throw new InvalidOperationException("The invertible adapter's layers need its coupling: create them through PeftModel."), IsInverse(context.Path));

    protected internal override void WriteFixedFields(JsonObject json) => json["inv_adapter"] = "nice";

    protected internal override AdapterConfig ReadFixedFields(JsonObject json, string file) =>
        json["inv_adapter"] is null || (json["inv_adapter"] is JsonValue v && v.TryGetValue<string>(out var block) && block == "nice") ? this
            : throw new AdapterConfigException($"{file}: inv_adapter {json["inv_adapter"]!.ToJsonString()} is not supported; PeftSharp has the NICE coupling (\"nice\").");

    /// <summary>The coupling's tensors have no module path (<c>invertible_adapter.F_down.weight</c>, ...); the per-layer
    /// wrappers hold none.</summary>
    public override IReadOnlyList<string> FileTensorMarkers => [];

    protected internal override IReadOnlyList<string> Choices(string option) => option == "activation" ? Activations.Names : [];
}

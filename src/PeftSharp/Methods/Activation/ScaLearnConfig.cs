using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Methods.Bottleneck;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>ScaLearn's variants (Frohmann et al. 2023, §3): scales per layer or shared by all layers, a vector per
/// source or one scalar per source.</summary>
public enum ScaLearnKind
{
    /// <summary>ScaLearn: λ_l^k ∈ R^d for every layer l and source k.</summary>
    [JsonStringEnumMemberName("vector")]
    Vector,

    /// <summary>ScaLearnUniform: one scalar λ_l^k per layer and source.</summary>
    [JsonStringEnumMemberName("scalar")]
    Scalar,

    /// <summary>ScaLearn++: λ^k ∈ R^d shared by all layers.</summary>
    [JsonStringEnumMemberName("vector_shared")]
    SharedVector,

    /// <summary>ScaLearnUniform++: one scalar λ^k per source shared by all layers.</summary>
    [JsonStringEnumMemberName("scalar_shared")]
    SharedScalar,
}

/// <summary>
/// ScaLearn (Frohmann et al. 2023, "ScaLearn: Simple and Highly Parameter-Efficient Task Transfer by Learning to Scale",
/// Eq. 2): the output of a layer that holds frozen source adapters a_1..a_K (e.g. bottleneck adapters trained on other
/// tasks) becomes o = h + Σ_k λ_k ⊙ Δ_k(h), Δ_k the contribution of source k; only the scales λ train. The sources must
/// be adapters of the same model at the same targets (<see cref="SourceAdapters"/>); they stay frozen. Scales start at
/// <see cref="InitialScale"/> (default 1/K: the average of the sources). Saved with <c>peft_type</c> "SCALEARN" (this
/// library's layout): <c>scalearn_scales</c> (K, d) or (K, 1) per module, or once at the model level for ++.
/// </summary>
public sealed record ScaLearnConfig : AdapterConfig
{
    /// <summary>The names of the frozen adapters composed (this library's <c>source_adapters</c>).</summary>
    [JsonPropertyName("source_adapters"), Option("sources", "source_adapters: comma-separated names of the frozen adapters to compose")]
    public IReadOnlyList<string> SourceAdapters { get; init; } = [];

    [JsonPropertyName("scalearn_kind"), Option("kind", "scalearn_kind: vector | scalar | vector_shared | scalar_shared")]
    public ScaLearnKind Kind { get; init; } = ScaLearnKind.Vector;

    /// <summary>The start value of every scale; null for 1/K.</summary>
    [JsonPropertyName("init_scale"), Option("init", "init_scale: the start value of every scale (default 1/K)", Min = -1e6, Max = 1e6)]
    public double? InitialScale { get; init; }

    public override string MethodName => "scalearn";

    public override string PeftType => "SCALEARN";

    public override string SupportedLayerTypes => "layers that hold every source adapter";

    public override bool CanHold(Module module) => module is TorchSharp.Modules.Linear or TorchSharp.Modules.LayerNorm or TorchSharp.Modules.Embedding;

    public override IReadOnlyList<string> DependsOn => SourceAdapters;

    public bool IsShared => Kind is ScaLearnKind.SharedVector or ScaLearnKind.SharedScalar;

    public bool IsVector => Kind is ScaLearnKind.Vector or ScaLearnKind.SharedVector;

    public override void Validate()
    {
        base.Validate();
        CompositionChecks.Sources(SourceAdapters, nameof(SourceAdapters));
    }

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        long width = CompositionChecks.Width(model, targetPaths, SourceAdapters, MethodName);
        return IsShared ? new ScaLearnScales(SourceAdapters.Count, IsVector ? width : 1, InitialScale ?? 1.0 / SourceAdapters.Count, model) : null;
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        long width = Bottleneck.Activations.Widths(context.BaseLayer, context.Path).Out;
        var reference = context.BaseLayer.parameters().First();
        return new ScaLearnAdapter(SourceAdapters, IsVector ? width : 1, InitialScale ?? 1.0 / SourceAdapters.Count, context.ModelAdapter as ScaLearnScales, reference.dtype, reference.device);
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".scalearn_"];

    protected internal override string? DefaultText(string option) => option == "init" ? "1/K" : null;
}

/// <summary>Checks shared by the adapters that compose source adapters (ScaLearn, AdapterFusion).</summary>
internal static class CompositionChecks
{
    public static void Sources(IReadOnlyList<string> sources, string field)
    {
        if (sources.Count < 1) throw new ArgumentException("Name the source adapters to compose (at least one), e.g. [\"sst\", \"mnli\"].", field);
        if (sources.Distinct().Count() != sources.Count) throw new ArgumentException("A source adapter is named twice.", field);
    }

    /// <summary>Every target holds every source; returns the targets' common output width.</summary>
    public static long Width(Module model, IReadOnlyList<string> targetPaths, IReadOnlyList<string> sources, string method)
    {
        long? width = null;
        foreach (var path in targetPaths)
        {
            if (ModuleSurgery.Get(model, path) is not AdapterLayer layer || sources.FirstOrDefault(s => !layer.Contains(s)) is { } missing)
                throw new ArgumentException($"{method} composes adapters {string.Join(", ", sources)} at '{path}', but '{path}' holds " +
                    $"{(ModuleSurgery.Get(model, path) is AdapterLayer l ? string.Join(", ", l.AdapterNames) : "no adapter")}: target the modules the sources adapt.");
            long w = Bottleneck.Activations.Widths(layer.BaseLayer, path).Out;
            if (width is long previous && previous != w)
                throw new ArgumentException($"{method} with layer-shared scales needs targets of one width; '{path}' is {w} wide, others {previous}.");
            width = w;
        }
        return width ?? 0;
    }
}

using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.Bottleneck;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", §3.2,
/// Eq. 4-6), ScaLearn's baseline: at each layer an attention over the frozen source adapters' contributions, with the
/// layer output h as query: s_k = softmax_k((Q h)ᵀ (K Δ_k)), o = h + Σ_k s_k V Δ_k. Q and K start N(0, 0.02), V at the
/// identity (the paper's initialisation), so at init o is close to h + the mean of the contributions. Saved with
/// <c>peft_type</c> "ADAPTER_FUSION" (this library's layout): <c>fusion_query</c>, <c>fusion_key</c>,
/// <c>fusion_value</c> per module.
/// </summary>
public sealed record AdapterFusionConfig : AdapterConfig
{
    /// <summary>The names of the frozen adapters fused (this library's <c>source_adapters</c>).</summary>
    [JsonPropertyName("source_adapters"), Option("sources", "source_adapters: comma-separated names of the frozen adapters to fuse")]
    public IReadOnlyList<string> SourceAdapters { get; init; } = [];

    public override string MethodName => "adapter-fusion";

    public override string PeftType => "ADAPTER_FUSION";

    public override string SupportedLayerTypes => "layers that hold every source adapter";

    public override bool CanHold(Module module) => module is TorchSharp.Modules.Linear or TorchSharp.Modules.LayerNorm or TorchSharp.Modules.Embedding;

    public override IReadOnlyList<string> DependsOn => SourceAdapters;

    public override void Validate()
    {
        base.Validate();
        CompositionChecks.Sources(SourceAdapters, nameof(SourceAdapters));
    }

    public override ModelAdapter? CreateModelAdapter(Module model, IReadOnlyList<string> targetPaths, bool initialize)
    {
        CompositionChecks.Width(model, targetPaths, SourceAdapters, MethodName);
        return null;
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var reference = context.BaseLayer.parameters().First();
        return new AdapterFusionAdapter(SourceAdapters, Bottleneck.Activations.Widths(context.BaseLayer, context.Path).Out, reference.dtype, reference.device);
    }

    public override IReadOnlyList<string> FileTensorMarkers => [".fusion_"];
}

/// <summary>AdapterFusion at one layer (Pfeiffer et al. 2021, Eq. 4-6): query from the layer output, keys and values
/// from each source adapter's contribution, softmax over the sources.</summary>
public sealed class AdapterFusionAdapter : AdapterModule, IReportsRouting
{
    readonly Linear fusion_query, fusion_key, fusion_value;
    readonly IReadOnlyList<string> _sources;

    public AdapterFusionAdapter(IReadOnlyList<string> sources, long width, ScalarType dtype, Device device) : base(nameof(AdapterFusionAdapter))
    {
        _sources = sources;
        fusion_query = Linear(width, width, device: device, dtype: dtype);
        fusion_key = Linear(width, width, device: device, dtype: dtype);
        fusion_value = Linear(width, width, hasBias: false, device: device, dtype: dtype);
        register_module("fusion_query", fusion_query);
        register_module("fusion_key", fusion_key);
        register_module("fusion_value", fusion_value);
        // In-place ops return new handles (and eye() a new tensor): a scope frees them.
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var l in new[] { fusion_query, fusion_key })
        {
            l.weight!.normal_(0, 0.02);
            l.bias!.zero_();
        }
        fusion_value.weight!.copy_(eye(width, dtype: dtype, device: device));
    }

    public override string MethodName => "adapter-fusion";

    public override string CannotMergeReason => "AdapterFusion attends over its source adapters' outputs, which depend on the input.";

    /// <summary>The fusion weights of the last forward pass, (..., K), for analysis (null before one).</summary>
    public Tensor? LastWeights { get; private set; }

    /// <summary>The last forward pass's fusion weights as routing: one row per position (example or token, flattened
    /// in order), one column per source adapter; each row sums to 1. The first <see cref="MaxRoutingRows"/> rows.</summary>
    public RoutingLayer? LastRouting
    {
        get
        {
            if (LastWeights is null) return null;
            using var rows = LastWeights.reshape(-1, _sources.Count).to(ScalarType.Float64).cpu();   // (N, K)
            long n = Math.Min(rows.shape[0], MaxRoutingRows);
            var values = rows.data<double>().ToArray();
            var weights = Enumerable.Range(0, (int)n).Select(i => (IReadOnlyList<double>)values.AsSpan(i * _sources.Count, _sources.Count).ToArray()).ToList();
            return new RoutingLayer(Layer?.Path ?? "adapter-fusion", Enumerable.Range(0, (int)n).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToList(), _sources, weights);
        }
    }

    /// <summary>How many rows <see cref="LastRouting"/> reports at most (a heatmap taller than this is unreadable).</summary>
    public const int MaxRoutingRows = 256;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var layer = Layer ?? throw new InvalidOperationException("An AdapterFusion adapter works inside an AdapterLayer.");
        var deltas = stack(_sources.Select(s => layer[s].Delta(x, result, baseLayer)).ToList(), -2);   // (..., K, d)
        var query = fusion_query.call(result).unsqueeze(-1);                                         // (..., d, 1)
        var scores = fusion_key.call(deltas).matmul(query).squeeze(-1);                              // (..., K)
        var weights = scores.softmax(-1);
        LastWeights?.Dispose();
        LastWeights = weights.detach().clone().DetachFromDisposeScope();
        // Inside a forward context the routing goes to its record too (the routing views read it from there).
        if (Context is { } context && LastRouting is { } routing) context.ReportRouting(routing);
        var fused = weights.unsqueeze(-2).matmul(fusion_value.call(deltas)).squeeze(-2);             // (..., d)
        return result.clone().add_(fused);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) LastWeights?.Dispose();
        base.Dispose(disposing);
    }
}

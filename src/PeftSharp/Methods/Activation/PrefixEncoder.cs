using PeftSharp.Adapters;
using PeftSharp.Models;
using PeftSharp.Models.Bert;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>
/// Prefix tuning's key/value prefixes (Li and Liang 2021, §4.2; reparameterised by an MLP, §4.3), given to the model's
/// attention through <see cref="IPromptHost.AttentionPrefix"/> while the adapter is on. Holds either the table
/// <c>embedding</c> (P, L·2·C) or, with the projection, <c>embedding</c> (P, C) and the MLP
/// <c>transform_0</c> (C → h), tanh, <c>transform_2</c> (h → L·2·C), as PEFT's <c>PrefixEncoder</c>.
/// </summary>
public sealed class PrefixEncoder : ModelAdapter, IAttentionPrefix
{
    readonly Parameter embedding;
    readonly Linear? transform_0, transform_2;
    readonly Func<IPromptHost> _host;   // a delegate: a Module-typed field would be registered as a child
    readonly int _layers, _heads, _width;

    public PrefixEncoder(PrefixTuningConfig config, IPromptHost host, bool projection) : base(nameof(PrefixEncoder))
    {
        _host = () => host;
        _layers = host.NumLayers;
        _heads = host.NumAttentionHeads;
        _width = host.HiddenSize;
        Length = config.NumVirtualTokens;
        var reference = host.InputEmbeddingWeight;
        long table = (long)_layers * 2 * _width;
        embedding = new Parameter(randn(Length, projection ? _width : table, dtype: reference.dtype, device: reference.device));
        register_parameter("embedding", embedding);
        if (projection)
        {
            int hidden = config.EncoderHiddenSize ?? _width;
            transform_0 = Linear(_width, hidden, device: reference.device, dtype: reference.dtype);
            transform_2 = Linear(hidden, table, device: reference.device, dtype: reference.dtype);
            register_module("transform_0", transform_0);
            register_module("transform_2", transform_2);
        }
    }

    public override string MethodName => "prefix-tuning";

    public override bool SupportsPerRow => false;

    public override string? CannotMergeReason => "prefix tuning adds keys and values to every attention, not a change of weights.";

    public int Length { get; }

    /// <summary>The prefixes as PEFT saves them: (P, L·2·C).</summary>
    public Tensor Table() => transform_0 is null ? embedding : transform_2!.call(transform_0.call(embedding).tanh());

    public (Tensor Key, Tensor Value) KeyValues(int layer, long batchSize)
    {
        var slots = Table().view(Length, 2 * _layers, _heads, _width / _heads);                      // (P, 2L, H, D)
        Tensor Slot(int i) => slots.select(1, i).permute(1, 0, 2).unsqueeze(0).expand(batchSize, -1, -1, -1);   // (B, H, P, D)
        return (Slot(2 * layer), Slot(2 * layer + 1));
    }

    /// <summary>Loading fills the plain table (PEFT's inference form).</summary>
    public override IEnumerable<(string Key, Tensor Parameter)> FileParameters() => [(PromptLearningConfig.FileKey, embedding)];

    public override IEnumerable<(string Key, Tensor Value)> TensorsForFile()
    {
        using var _ = no_grad();
        return [(PromptLearningConfig.FileKey, Table().detach().clone())];
    }

    public override AdapterConfig Complete(AdapterConfig config) => ((PromptLearningConfig)config).WithSizesOf(_host());

    protected override void Activate(Module model)
    {
        var host = _host();
        if (host.AttentionPrefix is { } other && !ReferenceEquals(other, this))
            throw new InvalidOperationException("Another prefix-tuning adapter is active on this model; activate one prefix at a time.");
        host.AttentionPrefix = this;
    }

    protected override void Deactivate(Module model)
    {
        var host = _host();
        if (ReferenceEquals(host.AttentionPrefix, this)) host.AttentionPrefix = null;
    }
}

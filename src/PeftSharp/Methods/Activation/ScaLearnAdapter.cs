using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>ScaLearn's layer-shared scales (ScaLearn++ / ScaLearnUniform++, Frohmann et al. 2023, §3.2), (K, d) or
/// (K, 1), key <c>base_model.model.scalearn_scales</c>.</summary>
public sealed class ScaLearnScales : ModelAdapter
{
    readonly Parameter scalearn_scales;

    public ScaLearnScales(int sources, long width, double initial, Module model) : base(nameof(ScaLearnScales))
    {
        var reference = model.parameters().First();
        scalearn_scales = new Parameter(full([sources, width], initial, dtype: reference.dtype, device: reference.device));
        register_parameter("scalearn_scales", scalearn_scales);
    }

    public override string MethodName => "scalearn";

    public Parameter Scales => scalearn_scales;
}

/// <summary>ScaLearn at one layer (Frohmann et al. 2023, Eq. 2): o = h + Σ_k λ_k ⊙ Δ_k(h) over the frozen source adapters
/// held by the same layer; λ (K, d) or (K, 1) is <c>scalearn_scales</c> here, or the model's shared scales.</summary>
public sealed class ScaLearnAdapter : AdapterModule
{
    readonly Parameter? scalearn_scales;
    readonly Func<Parameter>? _shared;   // a delegate: a Module-typed field would be registered as a child
    readonly IReadOnlyList<string> _sources;

    public ScaLearnAdapter(IReadOnlyList<string> sources, long width, double initial, ScaLearnScales? shared, ScalarType dtype, Device device)
        : base(nameof(ScaLearnAdapter))
    {
        _sources = sources;
        if (shared is not null) _shared = () => shared.Scales;
        else
        {
            scalearn_scales = new Parameter(full([sources.Count, width], initial, dtype: dtype, device: device));
            register_parameter("scalearn_scales", scalearn_scales);
        }
    }

    public override string MethodName => "scalearn";

    /// <summary>λ, (K, d) or (K, 1): row k scales source k.</summary>
    public Tensor Scales => (_shared?.Invoke() ?? scalearn_scales)!;

    public IReadOnlyList<string> Sources => _sources;

    public override string CannotMergeReason => "ScaLearn scales the outputs of its source adapters, which cannot merge either.";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var layer = Layer ?? throw new InvalidOperationException("A ScaLearn adapter works inside an AdapterLayer.");
        var scales = Scales;
        var output = result.clone();
        for (int k = 0; k < _sources.Count; k++)
            output = output.add_(layer[_sources[k]].Delta(x, result, baseLayer) * scales[k]);   // (..., d) ⊙ (d) or (1)
        return output;
    }
}

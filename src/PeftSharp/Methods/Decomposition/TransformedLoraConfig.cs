using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// Transformed LoRA (the survey's "Transformed Low-rank Adaptation via Tensor Decomposition" paper): the pre-trained weight
/// is transformed and corrected, W' = W T + ΔW, with T = I + ΔT a full-rank transform of the input space that starts at
/// the identity and ΔW a low-rank residual.
/// <para>What is implemented: ΔT is a tensor train of two cores over in = d₁·d₂ (a TT-matrix of order 2,
/// ΔT = Σ_{k≤t} G¹_k ⊗ G²_k with G¹_k d₁ × d₁, G²_k d₂ × d₂, t = <see cref="TtRank"/>, G² = 0 at init), and ΔW = s·B A is
/// a matrix low-rank term (rank r, B = 0 at init), not the paper's tensor-ring. So
/// y = W x + b + W ΔT x + s·B A x, the identity at init, and W' = W(I + ΔT) + s·B A merges exactly. Not in Hugging Face
/// PEFT.</para>
/// </summary>
public sealed record TransformedLoraConfig : AdapterConfig
{
    /// <summary><c>r</c>: the rank of ΔW = s·B A.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of the residual ΔW = s·B A", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary><c>lora_alpha</c>: s = alpha / r.</summary>
    [JsonPropertyName("lora_alpha"), Option("alpha", "lora_alpha: scale s = alpha / r")]
    public double LoraAlpha { get; init; } = 8;

    /// <summary><c>tt_rank</c>: t, the tensor-train rank of the transform ΔT.</summary>
    [JsonPropertyName("tt_rank"), Option("tt-rank", "tt_rank: rank of the two-core tensor train ΔT of T = I + ΔT", Min = 1, Max = 4096)]
    public int TtRank { get; init; } = 2;

    public override string MethodName => "transformed-lora";

    public override string PeftType => "TRANSFORMED_LORA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".tlora_"];

    public override void Validate()
    {
        base.Validate();
        if (LoraAlpha == 0 || !double.IsFinite(LoraAlpha))
            throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha, "lora_alpha must be a finite, non-zero number (commonly r or 2r).");
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        long inFeatures = weight.shape[1];
        int d1 = KroneckerSpectrum.BalancedFactor(inFeatures);
        return new TransformedLoraAdapter(R, LoraAlpha / R, TtRank, d1, (int)(inFeatures / d1), weight);
    }

    /// <summary>Given a rank but no alpha, alpha follows the rank (s = 1), as for LoRA.</summary>
    protected internal override AdapterConfig AfterBinding(IReadOnlyDictionary<string, string> options) =>
        options.ContainsKey("rank") && !options.ContainsKey("alpha") ? this with { LoraAlpha = R } : this;

    protected internal override string? DefaultText(string option) => option == "alpha" ? "rank" : null;
}

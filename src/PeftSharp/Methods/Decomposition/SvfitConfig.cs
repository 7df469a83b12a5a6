using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SVFit (Sun et al. 2024, "SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values",
/// §3): W = U S Vᵀ; the singular vectors stay frozen and only the top r singular values train, W' = U_r diag(s) V_rᵀ +
/// (W − U_r diag(s₀) V_rᵀ), i.e. ΔW = U_r diag(s − s₀) V_rᵀ. r is given (<see cref="R"/>) or, by default, chosen per
/// layer as the smallest r whose top singular values hold <see cref="EnergyThreshold"/> of ‖W‖_F² (cumulative energy
/// Σ_{i≤r} σ_i² / Σ σ_i², <see cref="SpectrumMarkers.EnergyRank"/>). Not in Hugging Face PEFT.
/// </summary>
public sealed record SvfitConfig : AdapterConfig
{
    /// <summary><c>r</c>: how many top singular values train; null picks it per layer by <see cref="EnergyThreshold"/>.</summary>
    [JsonPropertyName("r"), Option("rank", "r: top singular values that train (empty: chosen by --energy)", Min = 1, Max = 65536)]
    public int? R { get; init; }

    /// <summary><c>energy_threshold</c>: with no r, the share of ‖W‖_F² the trained singular values must hold.</summary>
    [JsonPropertyName("energy_threshold"), Option("energy", "energy_threshold: cumulative singular energy that picks r per layer", Min = 0, MinExclusive = true, Max = 1)]
    public double EnergyThreshold { get; init; } = 0.99;

    public override string MethodName => "svfit";

    public override string PeftType => "SVFIT";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".svfit_"];

    /// <summary>The rank at a layer of weight <paramref name="weight64"/>: <see cref="R"/>, else the energy rank of its
    /// spectrum (the same on every machine for the same base weights, so a file loads back into the same shapes).</summary>
    public int RankFor(Tensor weight64)
    {
        if (R is int r) return r;
        using var scope = NewDisposeScope();
        return SpectrumMarkers.EnergyRank(linalg.svdvals(weight64).data<double>().ToArray(), EnergyThreshold);
    }

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        var w64 = DecompositionInit.Weight64(context.BaseLayer, context.Path, "SVFit");
        try
        {
            int r = RankFor(w64);
            DecompositionInit.CheckRank(r, weight, context.Path, "SVFit");
            return new SvfitAdapter(r, weight, context.Initialize ? w64 : null);
        }
        finally
        {
            w64.Dispose();
        }
    }
}

using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SoKA, a Kronecker-product adapter initialised by KPSVD (the survey's SoKA paper; KPSVD: Van Loan and Pitsianis 1993,
/// see <see cref="KroneckerSpectrum"/>): W (m₁·m₂, n₁·n₂) ≈ Σ_{k≤K} A_k ⊗ B_k from the top K singular triplets of the Van
/// Loan rearrangement R(W); those K terms train (A_k m₁ × n₁, B_k m₂ × n₂) and the rest of W is a frozen residual, so
/// W' = W_res + Σ_k A_k ⊗ B_k and ΔW = Σ_k A_k ⊗ B_k − Σ_k A⁰_k ⊗ B⁰_k. K is given (<see cref="KroneckerTerms"/>) or
/// picked per layer on R(W)'s spectrum by an energy threshold or its elbow (<see cref="SpectrumMarkers"/>). Not in
/// Hugging Face PEFT.
/// </summary>
public sealed record SokaConfig : AdapterConfig
{
    /// <summary><c>kronecker_terms</c>: K, the number of trained Kronecker terms; null picks it per layer.</summary>
    [JsonPropertyName("kronecker_terms"), Option("terms", "kronecker_terms: K trained terms A_k ⊗ B_k (empty: picked by --select)", Min = 1, Max = 65536)]
    public int? KroneckerTerms { get; init; }

    /// <summary><c>term_selection</c>: with no K, "energy" (smallest K holding <see cref="EnergyThreshold"/> of R(W)'s
    /// energy) or "elbow" (the terms before the elbow of R(W)'s spectrum).</summary>
    [JsonPropertyName("term_selection"), Option("select", "term_selection: energy | elbow, how K is picked on R(W)'s spectrum")]
    public string TermSelection { get; init; } = "energy";

    /// <summary><c>energy_threshold</c>: the share of ‖W‖_F² the K terms hold when picked by energy.</summary>
    [JsonPropertyName("energy_threshold"), Option("energy", "energy_threshold: share of R(W)'s energy the K terms hold", Min = 0, MinExclusive = true, Max = 1)]
    public double EnergyThreshold { get; init; } = 0.5;

    /// <summary><c>grid_rows</c>: m₁, the rows of each A_k (must divide out); null: the largest divisor ≤ √out.</summary>
    [JsonPropertyName("grid_rows"), Option("grid-rows", "grid_rows: m1, rows of A_k (divides out; empty: balanced)", Min = 1, Max = 65536)]
    public int? GridRows { get; init; }

    /// <summary><c>grid_cols</c>: n₁, the columns of each A_k (must divide in); null: the largest divisor ≤ √in.</summary>
    [JsonPropertyName("grid_cols"), Option("grid-cols", "grid_cols: n1, columns of A_k (divides in; empty: balanced)", Min = 1, Max = 65536)]
    public int? GridCols { get; init; }

    public override string MethodName => "soka";

    public override string PeftType => "SOKA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".soka_"];

    public override void Validate()
    {
        base.Validate();
        if (TermSelection is not ("energy" or "elbow"))
            throw new ArgumentOutOfRangeException(nameof(TermSelection), TermSelection, "term_selection must be \"energy\" or \"elbow\".");
    }

    /// <summary>The block grid (m₁, n₁) at a layer of shape (out, in).</summary>
    public (int M1, int N1) GridFor(long outFeatures, long inFeatures, string path)
    {
        int m1 = GridRows ?? KroneckerSpectrum.BalancedFactor(outFeatures), n1 = GridCols ?? KroneckerSpectrum.BalancedFactor(inFeatures);
        if (outFeatures % m1 != 0 || inFeatures % n1 != 0)
            throw new ArgumentOutOfRangeException(nameof(GridRows), $"{m1}x{n1}",
                $"SoKA: the grid {m1}x{n1} does not divide '{path}' ({outFeatures}x{inFeatures}); grid_rows must divide {outFeatures} and grid_cols {inFeatures}, " +
                $"e.g. {KroneckerSpectrum.BalancedFactor(outFeatures)}x{KroneckerSpectrum.BalancedFactor(inFeatures)}.");
        return (m1, n1);
    }

    /// <summary>K at a layer: <see cref="KroneckerTerms"/>, else picked on the spectrum of R(W) (the same for the same
    /// base weights, so a file loads back into the same shapes).</summary>
    public int TermsFor(SingularSpectrum kroneckerSpectrum) =>
        KroneckerTerms ?? (TermSelection == "elbow" ? kroneckerSpectrum.Elbow : kroneckerSpectrum.RankForEnergy(EnergyThreshold));

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        var (m1, n1) = GridFor(weight.shape[0], weight.shape[1], context.Path);
        using var w64 = DecompositionInit.Weight64(context.BaseLayer, context.Path, "SoKA");
        int k = TermsFor(KroneckerSpectrum.Of(w64, m1, n1, context.Path));
        int max = (int)Math.Min((long)m1 * n1, weight.shape[0] / m1 * (weight.shape[1] / n1));
        if (k < 1 || k > max)
            throw new ArgumentOutOfRangeException(nameof(KroneckerTerms), k, $"SoKA: {k} Kronecker terms do not fit '{context.Path}' on a {m1}x{n1} grid, which has {max}; choose kronecker_terms in [1, {max}].");
        return new SokaAdapter(k, m1, n1, weight, context.Initialize ? w64 : null);
    }
}

using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// LoLDU (Shi et al. 2024, "LoLDU: Low-Rank Adaptation via Lower-Diag-Upper Decomposition for Parameter-Efficient
/// Fine-Tuning", §3): the partial-pivot LU factorisation W = P L D U (L unit lower (out × k), D = diag of the pivots,
/// U unit upper (k × in), k = min(out, in)) is split after r elimination steps,
/// W = P L_r D_r U_r + W_res, and the adapted layer computes W_res + s·P L_r diag(z) U_r with z (starting at D_r = D[:r])
/// and the scalar s (starting at 1) the only trained values, so ΔW = P L_r diag(s·z − D_r) U_r.
/// <para>L_r is the first r columns of L and U_r the first r rows of U: the terms of the first r elimination steps,
/// whose pivots partial pivoting chose as the largest available in their columns. With that split the frozen residual
/// W_res is exactly the Schur complement left after r steps (zero in the r pivot rows and the first r columns), the
/// LU counterpart of PiSSA's principal/residual split.</para>
/// Not in Hugging Face PEFT.
/// </summary>
public sealed record LolduConfig : AdapterConfig
{
    /// <summary><c>r</c>: how many elimination steps (diagonal entries) train.</summary>
    [JsonPropertyName("r"), Option("rank", "r: diagonal entries of D that train (with one scalar)", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    public override string MethodName => "loldu";

    public override string PeftType => "LOLDU";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".loldu_"];

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        DecompositionInit.CheckRank(R, weight, context.Path, "LoLDU");
        using var w64 = context.Initialize ? DecompositionInit.Weight64(context.BaseLayer, context.Path, "LoLDU") : null;
        return new LolduAdapter(R, weight, w64, context.Path);
    }
}

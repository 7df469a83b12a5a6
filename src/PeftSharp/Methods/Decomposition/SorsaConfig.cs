using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// SORSA (Cao 2024, "SORSA: Singular Values and Orthonormal Regularized Singular Vectors Adaptation of Large Language
/// Models", §3): W = U S Vᵀ is split into a principal part W_p = U_p diag(s_p) V_pᵀ from the top r singular triplets and
/// a frozen residual W_r = W − W_p; U_p (out × r), s_p (r) and V_pᵀ (r × in) train, kept near orthonormal by the
/// regulariser L_reg = ‖U_pᵀ U_p − I‖_F + ‖V_pᵀ V_p − I‖_F added to the loss with weight γ
/// (<see cref="SorsaRegularizer.AddTo"/>). Not in Hugging Face PEFT; the file follows its layout (module path + tensor name).
/// </summary>
public sealed record SorsaConfig : AdapterConfig
{
    /// <summary><c>r</c>: how many singular triplets form the trainable principal part.</summary>
    [JsonPropertyName("r"), Option("rank", "r: singular triplets that train (U_p, s_p, V_p)", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary><c>gamma</c>: weight γ of the orthonormal regulariser (used by <see cref="SorsaRegularizer.AddTo"/>).</summary>
    [JsonPropertyName("gamma"), Option("gamma", "gamma: weight of the orthonormal regulariser ||U'U - I|| + ||VV' - I||", Min = 0, Max = 1e6)]
    public double Gamma { get; init; } = 4e-4;

    public override string MethodName => "sorsa";

    public override string PeftType => "SORSA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".sorsa_"];

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        var weight = AdapterModule.BaseWeight(context.BaseLayer);
        DecompositionInit.CheckRank(R, weight, context.Path, "SORSA");
        using var w64 = context.Initialize ? DecompositionInit.Weight64(context.BaseLayer, context.Path, "SORSA") : null;
        return new SorsaAdapter(R, weight, w64);
    }
}

using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// Hydra (Kim et al. 2024, "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient Fine-tuning", §3, eq. 5): a
/// parallel low-rank branch on the layer's input and a sequential one on the pre-trained layer's output,
/// y = W x + b + s·B_p A_p x + s·B_s A_s (W x), s = alpha / r, with B_p = B_s = 0 at init (the identity). It merges
/// exactly: W' = W + s(B_p A_p + B_s A_s W). <see cref="Branches"/> keeps one branch only for the paper's ablation
/// ("parallel" is LoRA, "sequential" alone is a low-rank adapter after the layer). Not in Hugging Face PEFT.
/// </summary>
public sealed record HydraConfig : AdapterConfig
{
    /// <summary><c>r</c>: the rank of each branch.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of each branch", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary><c>hydra_alpha</c>: the scale numerator, s = alpha / r.</summary>
    [JsonPropertyName("hydra_alpha"), Option("alpha", "hydra_alpha: scale s = alpha / r")]
    public double Alpha { get; init; } = 8;

    /// <summary><c>branches</c>: "both" (Hydra), "parallel" or "sequential" (the ablation).</summary>
    [JsonPropertyName("branches"), Option("branches", "branches: both | parallel | sequential")]
    public string Branches { get; init; } = "both";

    public override string MethodName => "hydra";

    public override string PeftType => "HYDRA";

    public override string Variant => Branches == "both" ? "hydra" : $"hydra-{Branches}";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override bool Merges => true;

    public override IReadOnlyList<string> FileTensorMarkers => [".hydra_"];

    public bool HasParallel => Branches is "both" or "parallel";

    public bool HasSequential => Branches is "both" or "sequential";

    public override void Validate()
    {
        base.Validate();
        if (Branches is not ("both" or "parallel" or "sequential"))
            throw new ArgumentOutOfRangeException(nameof(Branches), Branches, "branches must be \"both\", \"parallel\" or \"sequential\".");
        if (Alpha == 0 || !double.IsFinite(Alpha))
            throw new ArgumentOutOfRangeException(nameof(Alpha), Alpha, "hydra_alpha must be a finite, non-zero number (commonly r or 2r).");
    }

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        new HydraAdapter(R, Alpha / R, HasParallel, HasSequential, AdapterModule.BaseWeight(context.BaseLayer));

    /// <summary>Given a rank but no alpha, alpha follows the rank (s = 1), as for LoRA.</summary>
    protected internal override AdapterConfig AfterBinding(IReadOnlyDictionary<string, string> options) =>
        options.ContainsKey("rank") && !options.ContainsKey("alpha") ? this with { Alpha = R } : this;

    protected internal override string? DefaultText(string option) => option == "alpha" ? "rank" : null;

    protected internal override IReadOnlyList<string> Choices(string option) => option == "branches" ? ["both", "parallel", "sequential"] : [];
}

namespace PeftSharp.Adapters;

/// <summary>
/// How the active adapters of a layer combine when several are active (AdapterHub's composition blocks; Pfeiffer et al.
/// 2020, "AdapterHub" and "MAD-X"). With one active adapter all modes are the same.
/// </summary>
public enum AdapterComposition
{
    /// <summary>Each adapter works on the output of the one before (MAD-X's language adapter, then task adapter):
    /// y = a_K(… a_1(base(x)) …). For adapters that add a function of the layer input (LoRA, (IA)³ on the input)
    /// this is the same as <see cref="Sum"/>.</summary>
    Stack,

    /// <summary>Every adapter sees the same base output and their contributions add up: y = base + Σ_k Δ_k.</summary>
    Sum,

    /// <summary>A weighted mean of the contributions: y = base + Σ_k w_k Δ_k with w_k = 1/K unless weights are given
    /// (AdapterHub's Average block).</summary>
    Average,
}

using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// The two few-shot variants of Multi-Head Routing (Caccia et al. 2023, "Multi-Head Adapter Routing for Cross-Task
/// Generalization", §4.2), built from a Poly/MHR adapter whose skill inventory was trained on other tasks:
/// MHR-z trains only the routing over the frozen inventory (<see cref="RoutingOnly"/>); MHR-μ drops the routing,
/// averages the inventory into one LoRA and fine-tunes that (<see cref="AverageInventory"/>).
/// </summary>
public static class MultiHeadRouting
{
    /// <summary>
    /// MHR-z: adds adapter <paramref name="target"/>, a Poly/MHR adapter with the same inventory as
    /// <paramref name="source"/> (copied; <c>poly_lora_A</c>, <c>poly_lora_B</c> frozen) and a fresh routing matrix for
    /// <paramref name="nTasks"/> tasks (default: the source's n_tasks), and makes it the active adapter, so only its
    /// <c>module_logits</c> train. The file it saves is an ordinary PEFT Poly directory (the freezing is a training
    /// choice, not a field of the file).
    /// </summary>
    public static PolyConfig RoutingOnly(PeftModel peft, string source, string target, int? nTasks = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var sourceConfig = SourceConfig(peft, source);
        var config = sourceConfig with { NTasks = nTasks ?? sourceConfig.NTasks, InitWeights = true };
        peft.AddAdapter(target, config);
        using (no_grad())
            foreach (var layer in peft.Layers.Where(l => l.Contains(source) && l.Contains(target)))
            {
                var (from, to) = ((PolyAdapter)layer[source], (PolyAdapter)layer[target]);
                to.InventoryA.copy_(from.InventoryA);
                to.InventoryB.copy_(from.InventoryB);
                to.InventoryFrozen = true;
            }
        peft.SetActiveAdapters(target);
        return config;
    }

    /// <summary>
    /// MHR-μ: adds adapter <paramref name="target"/>, a plain LoRA (PEFT <c>LORA</c>, rank r, lora_alpha 1 so that
    /// s = 1/r as in Poly) at every layer of <paramref name="source"/>, holding the inventory's average:
    /// A = reshape(mean_k A_qk) (in, r) and B = reshape(mean_k B_qk) (r, out), stored as <c>lora_A.weight</c> = Aᵀ and
    /// <c>lora_B.weight</c> = Bᵀ. Its output equals the Poly adapter's with uniform routing (w = 1/K). Makes it the active
    /// adapter, to be fine-tuned like any LoRA. The source's <c>modules_to_save</c> are not carried over.
    /// </summary>
    public static LoraConfig AverageInventory(PeftModel peft, string source, string target)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var poly = SourceConfig(peft, source);
        var layers = peft.Layers.Where(l => l.Contains(source)).ToList();
        var config = new LoraConfig { TargetModules = TargetModules.List(layers.Select(l => l.Path)), R = poly.R, LoraAlpha = 1 };
        peft.AddAdapter(target, config);
        using (no_grad())
            foreach (var layer in layers)
            {
                using var scope = NewDisposeScope();
                var (from, to) = ((PolyAdapter)layer[source], (LoraLinearAdapter)layer[target]);
                var a = from.InventoryA.mean([1]).reshape(-1, poly.R);                    // (q, d_in, r) → (in, r)
                var b = from.InventoryB.mean([1]).transpose(0, 1).reshape(poly.R, -1);    // (q, r, d_out) → (r, out)
                to.A.copy_(a.t());
                to.B.copy_(b.t());
            }
        peft.SetActiveAdapters(target);
        return config;
    }

    static PolyConfig SourceConfig(PeftModel peft, string source) =>
        peft.Config(source) as PolyConfig
        ?? throw new ArgumentException($"Adapter '{source}' is {peft.Config(source).MethodName}, not a Poly/MHR adapter: MHR-z and MHR-μ start from a Poly skill inventory.", nameof(source));
}

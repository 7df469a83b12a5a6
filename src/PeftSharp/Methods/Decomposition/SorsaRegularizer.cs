using PeftSharp.Adapters;
using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Methods.Decomposition;

/// <summary>SORSA's orthonormal regulariser γ Σ_layers (‖U_pᵀ U_p − I‖_F + ‖V_pᵀ V_p − I‖_F) (Cao 2024, §3), for the
/// trainer's extra-loss hook, and the deviation from orthonormality to watch it.</summary>
public static class SorsaRegularizer
{
    /// <summary>The loss term's name in the training log.</summary>
    public const string TermName = "sorsa_orthonormal";

    /// <summary>Adds γ·L_reg of adapter <paramref name="adapterName"/> (default the first active one) to every step of
    /// <paramref name="trainer"/>; γ is the adapter config's <c>gamma</c> unless <paramref name="gamma"/> is given.</summary>
    public static void AddTo(Trainer trainer, PeftModel peft, string? adapterName = null, double? gamma = null)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        var (name, adapters, config) = Find(peft, adapterName);
        double weight = gamma ?? config.Gamma;
        if (weight < 0 || !double.IsFinite(weight))
            throw new ArgumentOutOfRangeException(nameof(gamma), weight, "gamma is a non-negative weight, e.g. 4e-4.");
        trainer.AddLossTerm(adapterName is null ? TermName : $"{TermName}[{name}]", () =>
        {
            var total = adapters[0].OrthonormalPenalty();
            foreach (var a in adapters.Skip(1)) total = total + a.OrthonormalPenalty();
            return total * weight;
        });
    }

    /// <summary>Σ_layers (‖U_pᵀ U_p − I‖_F + ‖V_pᵀ V_p − I‖_F) now, without γ: how far the singular vectors drifted.</summary>
    public static double Deviation(PeftModel peft, string? adapterName = null)
    {
        var (_, adapters, _) = Find(peft, adapterName);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return adapters.Sum(a => a.OrthonormalPenalty().to(ScalarType.Float64).item<double>());
    }

    static (string Name, IReadOnlyList<SorsaAdapter> Adapters, SorsaConfig Config) Find(PeftModel peft, string? adapterName)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var name = adapterName ?? peft.ActiveAdapters.FirstOrDefault()
            ?? throw new InvalidOperationException("The model has no active adapter; attach a SORSA adapter first.");
        if (!peft.AdapterNames.Contains(name))
            throw new ArgumentException($"No adapter '{name}'; adapters: {string.Join(", ", peft.AdapterNames)}.", nameof(adapterName));
        if (peft.Config(name) is not SorsaConfig config)
            throw new ArgumentException($"Adapter '{name}' is {peft.Config(name).MethodName}, not SORSA; the orthonormal regulariser needs SORSA's U_p and V_p.", nameof(adapterName));
        var adapters = peft.Layers.Where(l => l.Contains(name)).Select(l => (SorsaAdapter)l[name]).ToList();
        return (name, adapters, config);
    }
}

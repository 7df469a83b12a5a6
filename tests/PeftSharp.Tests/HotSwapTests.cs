using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Hot-swapping a LoRA adapter's values in place (PEFT's hotswap_adapter): same layers, same parameter
/// objects, the new adapter's outputs and scale; incompatible adapters are refused before anything changes.</summary>
public sealed class HotSwapTests
{
    static Mlp Base()
    {
        manual_seed(12);
        var model = new Mlp();
        model.eval();
        return model;
    }

    /// <summary>A LoRA (r 4) with random values saved from a fresh model with the same base weights.</summary>
    static string Saved(double alpha, int rank = 4, double dropout = 0, int seed = 1)
    {
        manual_seed(seed);
        var peft = PeftModel.Create(Base(), new LoraConfig { TargetModules = ["lin0", "lin1"], R = rank, LoraAlpha = alpha, LoraDropout = dropout, InitLoraWeights = LoraInit.Random });
        var directory = TempDirectory.Create();
        peft.Save(directory);
        return directory;
    }

    [Fact]
    public void A_hot_swap_copies_the_new_values_into_the_same_parameters_and_gives_the_new_adapters_outputs()
    {
        var model = Base();
        var peft = PeftModel.Load(model, Saved(alpha: 8, seed: 1), "live");
        var layers = peft.Layers.ToList();
        var parameters = layers.SelectMany(l => l["live"].parameters()).ToList();
        using var x = randn(5, 16);
        using var before = model.call(x);

        var next = Saved(alpha: 16, seed: 2);
        peft.HotSwapAdapter("live", next);

        Assert.Equal(layers, peft.Layers);                                     // no layer rebuilt
        Assert.Equal(parameters, layers.SelectMany(l => l["live"].parameters()));   // the same parameter objects
        Assert.Equal(16, ((LoraConfig)peft.Config("live")).LoraAlpha);
        Assert.Equal(4.0, ((LoraLinearAdapter)layers[0]["live"]).Scaling);
        using var swapped = model.call(x);
        using var expected = PeftModel.Load(Base(), next).Model is Mlp fresh ? fresh.call(x) : throw new InvalidOperationException();
        Tensors.AssertEqual(expected, swapped, "output after the swap");
        Tensors.AssertDifferent(before, swapped, "output before and after");
    }

    [Fact]
    public void Incompatible_adapters_are_refused_and_the_adapter_is_unchanged()
    {
        var model = Base();
        var peft = PeftModel.Load(model, Saved(alpha: 8), "live");
        using var x = randn(5, 16);
        using var before = model.call(x);
        void Refused(string expected, Action swap) => Assert.Contains(expected, Assert.ThrowsAny<Exception>(swap).Message);

        Refused("keeps the ranks", () => peft.HotSwapAdapter("live", Saved(alpha: 8, rank: 2)));
        Refused("lora_dropout 0 vs 0.1", () => peft.HotSwapAdapter("live", Saved(alpha: 8, dropout: 0.1)));
        Refused("No adapter named 'other'", () => peft.HotSwapAdapter("other", Saved(alpha: 8)));
        var tensors = peft.AdapterTensors("live");
        var config = (LoraConfig)peft.Config("live");
        tensors.Remove(AdapterFiles.KeyPrefix + "lin1.lora_B.weight");
        Refused("missing 'base_model.model.lin1.lora_B.weight'", () => peft.HotSwapAdapter("live", config, tensors));
        tensors[AdapterFiles.KeyPrefix + "lin1.lora_B.weight"] = full(32, 4, float.NaN);
        Refused("NaN", () => peft.HotSwapAdapter("live", config, tensors));

        using var after = model.call(x);
        Tensors.AssertEqual(before, after, "output after the refused swaps");
        Assert.Equal(8, ((LoraConfig)peft.Config("live")).LoraAlpha);

        peft.Merge();
        Refused("Unmerge()", () => peft.HotSwapAdapter("live", Saved(alpha: 8, seed: 3)));
    }
}

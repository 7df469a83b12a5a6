using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

public sealed class AnalysisTests
{
    [Fact]
    public void Spectrum_of_a_known_matrix_has_its_singular_values_and_energy()
    {
        using var m = diag(tensor(new[] { 3.0, 0, 4.0 }));
        var s = SingularSpectrum.Of(m, "m");
        Assert.Equal([4.0, 3.0, 0.0], s.Values.Select(v => Math.Round(v, 9)));
        Assert.Equal(25, s.TotalEnergy, 9);
        Assert.Equal(16.0 / 25, s.CumulativeEnergy[0], 9);
        Assert.Equal(1.0, s.CumulativeEnergy[^1], 9);
        Assert.Equal(1, s.RankForEnergy(0.6));
        Assert.Equal(2, s.RankForEnergy(1.0));
        Assert.Equal(25.0 / 16, s.StableRank, 9);
        Assert.InRange(s.EffectiveRank, 1.9, 2.0);
        Assert.Throws<ArgumentOutOfRangeException>(() => s.RankForEnergy(0));
    }

    [Fact]
    public void Lora_delta_spectrum_has_at_most_rank_r_non_zero_values_and_marks_the_rank()
    {
        manual_seed(1);
        var model = new Mlp(16, 32, 8);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 3, InitLoraWeights = LoraInit.Random });
        var delta = SingularSpectrum.OfDelta(peft, "lin0");
        Assert.Equal(SpectrumSource.Delta, delta.Source);
        Assert.Equal(3, delta.AdapterRank);
        Assert.Equal([32L, 16L], delta.Shape);
        Assert.Equal(16, delta.Values.Count);
        Assert.All(delta.Values.Skip(3), v => Assert.True(v < 1e-5 * delta.Values[0], $"value {v} beyond rank 3"));
        Assert.Equal(1.0, delta.EnergyAtAdapterRank!.Value, 6);

        var weight = SingularSpectrum.OfWeight(peft, "lin0");
        Assert.Equal(SpectrumSource.Weight, weight.Source);
        Assert.Equal(3, weight.AdapterRank);
        var adapted = SingularSpectrum.OfAdapted(peft, "lin0");
        Assert.NotEqual(weight.Values[0], adapted.Values[0]);
        Assert.Equal(2, SingularSpectrum.OfDeltas(peft).Count);
    }

    [Fact]
    public void Spectrum_errors_name_the_layer_and_the_choices()
    {
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        var unknown = Assert.Throws<ArgumentException>(() => SingularSpectrum.OfDelta(peft, "lin9"));
        Assert.Contains("lin0", unknown.Message);
        var notAdapted = Assert.Throws<ArgumentException>(() => SingularSpectrum.OfDelta(peft, "lin1"));
        Assert.Contains("holds no adapter", notAdapted.Message);
        var noAdapter = Assert.Throws<ArgumentException>(() => SingularSpectrum.OfDelta(peft, "lin0", "other"));
        Assert.Contains("default", noAdapter.Message);
    }

    [Fact]
    public void Rank_allocation_lists_each_layer_and_records_changes()
    {
        var peft = PeftModel.Create(new Mlp(), new LoraConfig
        {
            TargetModules = ["lin0", "lin1"], R = 4, RankPattern = new Dictionary<string, int> { ["lin1"] = 2 },
        });
        var allocation = RankAllocation.Of(peft);
        Assert.Equal(["lin0", "lin1"], allocation.Layers);
        Assert.Equal([4, 2], allocation.Ranks);
        Assert.Equal(6, allocation.TotalRank);
        Assert.False(allocation.ChangesOverTime);

        var later = allocation.WithSnapshot(10, [3, 3]);
        Assert.True(later.ChangesOverTime);
        Assert.Equal([3, 3], later.Ranks);
        Assert.Equal(2, later.History.Count);
        Assert.Throws<ArgumentException>(() => later.WithSnapshot(20, [1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => later.WithSnapshot(5, [1, 1]));
        Assert.Throws<ArgumentException>(() => RankAllocation.Of(peft, "nope"));
    }

    [Fact]
    public void Routing_records_check_their_shape_and_explain_when_no_method_routes()
    {
        var layer = new RoutingLayer("layers.0.attn.q", ["t0", "t1"], ["e0", "e1", "e2"], [[0.5, 0.5, 0], [0, 0, 1]]);
        Assert.Equal([0.25, 0.25, 0.5], layer.ExpertLoad);
        Assert.Throws<ArgumentException>(() => new RoutingLayer("x", ["t0"], ["e0", "e1"], [[1.0]]));
        Assert.Throws<ArgumentException>(() => new RoutingLayer("x", ["t0", "t1"], ["e0"], [[1.0]]));

        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        var error = Assert.Throws<InvalidOperationException>(() => RoutingWeights.Collect(peft));
        Assert.Contains("lora", error.Message);
    }

    static RoutingWeights TwoLayers(double first) => new(
    [
        new RoutingLayer("layers.0.down_proj", ["0", "1"], ["e0", "e1", "e2"], [[first, 1 - first, 0], [0, 0, 1]]),
        new RoutingLayer("layers.1.down_proj", ["0", "1"], ["e0"], [[1.0], [1.0]]),
    ]);

    [Fact]
    public void Routing_rows_can_be_named_after_the_tokens_and_layers_picked_by_path()
    {
        var named = TwoLayers(0.5).WithRowLabels(["0 The", "1 jury"]);
        Assert.All(named.Layers, l => Assert.Equal(["0 The", "1 jury"], l.Rows));
        Assert.Equal(TwoLayers(0.5).Layers.Select(l => l.Weights), named.Layers.Select(l => l.Weights));
        var error = Assert.Throws<ArgumentException>(() => TwoLayers(0.5).WithRowLabels(["The"]));
        Assert.Contains("1 row labels, but the routing at 'layers.0.down_proj' has 2 rows", error.Message);

        Assert.Equal(["layers.1.down_proj"], TwoLayers(0.5).Where(p => p.StartsWith("layers.1")).Layers.Select(l => l.Layer));
        Assert.Contains("layers.0.down_proj, layers.1.down_proj", Assert.Throws<ArgumentException>(() => TwoLayers(0.5).Where(p => p.Contains("q_proj"))).Message);
    }

    [Fact]
    public void Expert_load_averages_the_routing_weights_over_every_row_of_every_pass()
    {
        // Rows of layer 0 over both passes: [1, 0, 0], [0, 0, 1], [0.5, 0.5, 0], [0, 0, 1] -> loads 0.375, 0.125, 0.5.
        var load = ExpertLoad.Of("load", [TwoLayers(1.0), TwoLayers(0.5)]);
        Assert.Equal(["layers.0.down_proj", "layers.1.down_proj"], load.Layers);
        Assert.Equal([0.375, 0.125, 0.5], load.Loads[0]);
        Assert.Equal([1.0], load.Loads[1]);
        Assert.Equal([4, 4], load.Rows);
        Assert.Equal([1.5, 1.0], load.Imbalance);                     // 0.5 against an even 1/3; one expert is always even
        var other = new RoutingWeights([TwoLayers(1).Layers[0]]);
        Assert.Contains("must run the same adapters", Assert.Throws<ArgumentException>(() => ExpertLoad.Of("load", [TwoLayers(1), other])).Message);
    }
}

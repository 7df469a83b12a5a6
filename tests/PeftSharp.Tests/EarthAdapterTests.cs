using PeftSharp.Adapters;
using PeftSharp.Methods.Routing;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Earth-Adapter: the Fourier split is an exact partition into low and high bands, the bands hold what they
/// should, and the layer mixes its frequency experts with a soft router, leaving the [CLS] token alone.</summary>
public sealed class EarthAdapterTests
{
    [Theory, InlineData(16), InlineData(5)]   // a 4 x 4 patch grid (2-D spectrum) and a sequence of 5 (1-D)
    public void The_low_and_high_bands_add_up_to_the_signal(int tokens)
    {
        manual_seed(1);
        using var x = randn(3, tokens, 8);
        var (low, high) = EarthAdapterConfig.SplitFrequencies(x, 0.5);
        Tensors.AssertClose(x, low + high, 1e-6, "low + high");
        Tensors.AssertDifferent(low, x, "the low band alone");
        Tensors.AssertDifferent(high, x, "the high band alone");
        low.Dispose();
        high.Dispose();
    }

    [Theory, InlineData(16), InlineData(6)]
    public void A_constant_signal_is_all_low_and_an_alternating_one_all_high(int tokens)
    {
        using var constant = ones(2, tokens, 3) * 0.7;
        var (low, high) = EarthAdapterConfig.SplitFrequencies(constant, 0.5);
        Tensors.AssertClose(constant, low, 1e-6, "constant: low band");
        Tensors.AssertClose(zeros_like(constant), high, 1e-6, "constant: high band");
        // The highest frequency: a checkerboard over the 4 x 4 grid, or +1, -1, ... along the sequence.
        int side = (int)Math.Sqrt(tokens);
        var signs = Enumerable.Range(0, tokens).Select(i => side * side == tokens ? ((i / side + i % side) % 2 == 0 ? 1f : -1f) : (i % 2 == 0 ? 1f : -1f)).ToArray();
        using var alternating = tensor(signs).reshape(1, tokens, 1).expand(2, tokens, 3).contiguous();
        var (low2, high2) = EarthAdapterConfig.SplitFrequencies(alternating, 0.5);
        Tensors.AssertClose(alternating, high2, 1e-6, "alternating: high band");
        Tensors.AssertClose(zeros_like(alternating), low2, 1e-6, "alternating: low band");
        foreach (var t in new[] { low, high, low2, high2 }) t.Dispose();
    }

    [Fact]
    public void A_cutoff_that_leaves_no_low_band_is_refused_with_the_smallest_that_works()
    {
        using var x = randn(1, 16, 4);
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => EarthAdapterConfig.SplitFrequencies(x, 0.3));
        Assert.Contains("no low band on a 4 x 4 grid", error.Message);
        Assert.Contains("at least 0.5", error.Message);
    }

    [Fact]
    public void The_layer_mixes_its_three_experts_by_the_router_and_leaves_the_cls_token_unchanged()
    {
        manual_seed(2);
        var block = new TransformerBlock(16, 2, 32);
        block.eval();
        var peft = PeftModel.Create(block, new EarthAdapterConfig { TargetModules = ["fc2"], Dim = 4, Scale = 0.5 });
        Tensors.PerturbAdapters(peft, "default", 0.3);
        var layer = peft.Layers.Single();
        var adapter = (EarthAdapter)layer["default"];
        var experts = adapter.named_children().Single(c => c.name == "earth_experts").module.named_children().Select(c => (nn.Module<Tensor, Tensor>)c.module).ToList();
        var router = (nn.Module<Tensor, Tensor>)adapter.named_children().Single(c => c.name == "earth_router").module;
        var scale = adapter.named_parameters().Single(p => p.name == "earth_scale").parameter;

        manual_seed(3);
        var h = randn(2, 17, 32);                                  // fc2's input: [CLS] + a 4 x 4 grid of tokens
        var context = new ForwardContext();
        Tensor output;
        using (peft.Use(context)) output = layer.call(h);
        using var baseOut = layer.BaseLayer.call(h).detach();
        using var tokens = baseOut[.., 1..];
        var (low, high) = EarthAdapterConfig.SplitFrequencies(tokens, 0.5);
        using var w = router.call(tokens).softmax(-1);
        using var expected = tokens + scale * (w[.., .., 0..1] * experts[0].call(tokens) + w[.., .., 1..2] * experts[1].call(low) + w[.., .., 2..3] * experts[2].call(high));
        Tensors.AssertClose(expected, output[.., 1..], 1e-5, "patch tokens");
        Tensors.AssertEqual(baseOut[.., ..1], output[.., ..1], "[CLS] token");

        var routing = Assert.Single(context.RoutingWeights().Layers);
        Assert.Equal(["original", "low", "high"], routing.Experts);
        Assert.Equal(2 * 16, routing.Rows.Count);
        Assert.All(routing.Weights, r => Assert.Equal(1.0, r.Sum(), 6));
    }
}

using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>LoRA on a frozen Linear as one autograd node (<see cref="LoraLinearAdapter.TryFusedForward"/>) against the
/// same sum written with libtorch's own operations: y = x Wᵀ + b + s · B A dropout(x), with and without dropout.</summary>
public sealed class FusedLoraTests
{
    [Theory]
    [InlineData(0.0)]
    [InlineData(0.1)]
    [InlineData(0.5)]
    public void The_fused_layer_gives_the_outputs_and_gradients_of_dropout_then_the_low_rank_sum(double p)
    {
        manual_seed(3);
        var model = new Mlp(16, 32, 8);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 4, LoraAlpha = 8, LoraDropout = p, InitLoraWeights = LoraInit.Random });
        model.train();
        var layer = peft.Layers.Single();
        var lora = (LoraLinearAdapter)layer[PeftModel.DefaultAdapterName];
        var linear = (Linear)layer.BaseLayer;
        var x = randn(5, 3, 16).requires_grad_();
        var upstream = randn(5, 3, 32);

        // The reference: nn's dropout (what the unfused layer calls) and two Linears, on the same generator state.
        manual_seed(11);
        var dropped = p > 0 ? functional.dropout(x, p, training: true) : x;
        var expected = functional.linear(x, linear.weight!, linear.bias) + functional.linear(functional.linear(dropped, lora.A), lora.B) * lora.Scaling;
        (expected * upstream).sum().backward();
        var (xGrad, aGrad, bGrad) = (x.grad!.clone(), lora.A.grad!.clone(), lora.B.grad!.clone());
        foreach (var t in new[] { x, lora.A, lora.B }) t.grad!.zero_();

        manual_seed(11);
        var fused = lora.TryFusedForward(x, linear);
        Assert.NotNull(fused);   // a frozen Linear and one LoRA: the fused path, dropout or not
        (fused! * upstream).sum().backward();

        Assert.True(fused.allclose(expected, rtol: 1e-5, atol: 1e-6), "outputs differ");
        Assert.True(x.grad!.allclose(xGrad, rtol: 1e-5, atol: 1e-6), "input gradients differ");
        Assert.True(lora.A.grad!.allclose(aGrad, rtol: 1e-5, atol: 1e-6), "lora_A gradients differ");
        Assert.True(lora.B.grad!.allclose(bGrad, rtol: 1e-5, atol: 1e-6), "lora_B gradients differ");
        Assert.Null(linear.weight!.grad);   // the frozen weight gets no gradient

        // Without a graph (no_grad in training mode) the straight path draws the same noise.
        manual_seed(11);
        using (no_grad())
            Assert.True(lora.TryFusedForward(x, linear)!.allclose(expected, rtol: 1e-5, atol: 1e-6), "the no-grad output differs");
    }

    [Fact]
    public void Training_steps_through_fused_layers_with_dropout_leave_no_live_tensors()
    {
        manual_seed(5);
        var model = new Mlp(16, 32, 8);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraDropout = 0.2, InitLoraWeights = LoraInit.Random });
        model.train();
        var x = randn(64, 16);
        Tensor Step()
        {
            using var scope = NewDisposeScope();
            var loss = model.call(x).pow(2).mean();
            loss.backward();
            return loss.detach().MoveToOuterDisposeScope();
        }
        Step().Dispose();   // warm-up: the fused node's first-call state
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) Step().Dispose();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.All(peft.Layers, l => Assert.NotNull(((LoraLinearAdapter)l[PeftModel.DefaultAdapterName]).A.grad));
    }

    [Fact]
    public void Two_threads_training_at_once_each_free_only_their_own_gradients()
    {
        // Thread 0 adapts the first layer (its input needs no gradient: two gradients returned per backward), thread 1 the
        // second (three): a thread that freed the other's returned gradients would see its live-tensor count drift.
        var drift = new long[2];
        var errors = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(i => new Thread(() =>
        {
            try
            {
                var model = new Mlp(16, 32, 8);
                PeftModel.Create(model, new LoraConfig { TargetModules = [i == 0 ? "lin0" : "lin1"], R = 4, InitLoraWeights = LoraInit.Random });
                model.train();
                var x = randn(32, 16);
                void Step()
                {
                    using var scope = NewDisposeScope();
                    model.call(x).pow(2).mean().backward();
                }
                Step();
                long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
                for (int step = 0; step < 300; step++) Step();
                drift[i] = DisposeScopeManager.Statistics.ThreadTotalLiveCount - live;
            }
            catch (Exception e) { errors[i] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Equal(new Exception?[2], errors);
        Assert.Equal(new long[2], drift);
    }

    [Theory]
    [InlineData(1.0, true)]
    [InlineData(2.5, true)]
    [InlineData(2.5, false)]
    public void The_low_rank_node_gives_the_outputs_and_gradients_of_two_linears_and_the_same_output_without_a_graph(double scaling, bool inputNeedsGradient)
    {
        // What several active adapters, a trained base and DoRA use: s · B A x alone, (6, 5, 12) → (6, 5, 20), r = 3.
        manual_seed(4);
        var x = randn(6, 5, 12);
        if (inputNeedsGradient) x.requires_grad_();
        var a = randn(3, 12).requires_grad_();
        var b = randn(20, 3).requires_grad_();
        var upstream = randn(6, 5, 20);

        var expected = functional.linear(functional.linear(x, a), b) * scaling;
        (expected * upstream).sum().backward();
        var (xGrad, aGrad, bGrad) = (x.grad?.clone(), a.grad!.clone(), b.grad!.clone());
        foreach (var t in new[] { x, a, b }) t.grad?.zero_();

        var actual = LoraLinearFunction.LowRank(x, a, b, scaling);
        (actual * upstream).sum().backward();

        Assert.Equal(expected.shape, actual.shape);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-5), "outputs differ");
        Assert.True(a.grad!.allclose(aGrad, rtol: 1e-5, atol: 1e-5), "A's gradients differ");
        Assert.True(b.grad!.allclose(bGrad, rtol: 1e-5, atol: 1e-5), "B's gradients differ");
        if (inputNeedsGradient) Assert.True(x.grad!.allclose(xGrad!, rtol: 1e-5, atol: 1e-5), "input gradients differ");
        else Assert.Null(x.grad);
        using (no_grad())
            Assert.True(LoraLinearFunction.LowRank(x, a, b, scaling).allclose(actual.detach(), rtol: 0, atol: 0), "a frozen adapter computes differently from a training one");
    }
}

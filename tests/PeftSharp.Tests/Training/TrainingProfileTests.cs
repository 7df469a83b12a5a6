using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests.Training;

/// <summary>What <see cref="TrainingProfile.Measure"/> reports and what it leaves behind: every adapted layer timed,
/// phases that add up, memory by kind, the model unchanged, no leaks, and clear refusals.</summary>
public sealed class TrainingProfileTests
{
    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Profiling_a_training_step_times_every_adapter_layer_and_leaves_the_model_and_the_tensor_count_as_they_were(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        var x = c.NewInput();
        Tensor Output()
        {
            using var _ = no_grad();
            return model.call(x);
        }
        var before = Output();
        var weights = model.parameters().Select(p => p.detach().clone()).ToList();
        // Warm-up: a fused LoRA backward leaves its last returned gradients to the next one on this thread (LoraLinearFunction);
        // after one profile those are the profile's own, so the count before and after the next one compare exactly.
        TrainingProfile.Measure(model, () => model.call(x).pow(2).mean(), steps: 1);
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;

        var profile = TrainingProfile.Measure(model, () => model.call(x).pow(2).mean(), steps: 2);

        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.False(model.training);   // the matrix's models start in eval mode
        Assert.All(model.parameters(), p => Assert.True(p.grad is null || p.grad.abs().max().item<float>() == 0, "a gradient was left behind"));
        Assert.All(model.parameters().Zip(weights), pair => Assert.True(pair.First.detach().allclose(pair.Second, rtol: 0, atol: 0), "the profile's learning rate 0 step changed a weight"));
        Assert.True(Output().allclose(before, rtol: 0, atol: c.ExactTolerance), "the outputs changed");

        var timed = profile.Modules.Select(m => m.Path).ToHashSet();
        Assert.All(peft.Layers, layer => Assert.Contains(layer.Path, timed));   // prompt methods adapt no layer: nothing to check
        Assert.NotEmpty(profile.Modules);
        Assert.All(profile.Modules, m => Assert.True(m.ForwardSeconds >= 0 && m.BackwardSeconds >= 0, $"{m.Path} has a negative time"));
        Assert.Equal(model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()), profile.TrainableParameters);
    }

    [Fact]
    public void The_phases_and_the_modules_account_for_the_whole_step_and_memory_is_counted_by_kind()
    {
        manual_seed(1);
        var model = new Mlp(16, 64, 8);
        PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4 });
        var x = randn(256, 16);

        var profile = TrainingProfile.Measure(model, () => model.call(x).pow(2).mean(), steps: 3, title: "LoRA on the MLP");

        Assert.Equal(["lin0", "lin1", "head"], profile.Modules.Select(m => m.Path));   // the order the forward calls them
        Assert.Equal(["AdapterLayer", "AdapterLayer"], profile.Modules.Take(2).Select(m => m.Kind));
        Assert.Equal(profile.StepSeconds, profile.Phases.Sum(p => p.Seconds), 9);
        Assert.Equal(profile.ForwardSeconds, profile.Modules.Sum(m => m.ForwardSeconds) + profile.ForwardBetweenModulesSeconds, 9);
        Assert.Equal(profile.BackwardSeconds, profile.Modules.Sum(m => m.BackwardSeconds) + profile.BackwardBetweenModulesSeconds, 9);
        Assert.All(profile.Modules.Take(2), m => Assert.True(m.BackwardSeconds > 0, $"{m.Path} has no backward time"));

        long trained = model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        Assert.Equal(4 * trained, profile.GradientBytes);
        Assert.Equal(2 * 4 * trained, profile.OptimizerStateBytes);
        Assert.Equal(4 * model.parameters().Sum(p => p.numel()), profile.ParameterBytes);
        // Outputs of lin0 (256 x 64), lin1 (256 x 64) and head (256 x 8), as float32.
        Assert.Equal(4L * 256 * (64 + 64 + 8), profile.ModuleOutputBytes);
        Assert.Equal(trained, profile.Modules.Sum(m => m.TrainableParameters));
        Assert.Contains("LoRA on the MLP", profile.ToText());
        Assert.Contains("lin0", profile.ToText());
    }

    [Fact]
    public void Full_fine_tuning_keeps_a_gradient_and_two_moments_for_every_parameter_and_lora_for_a_few()
    {
        manual_seed(2);
        var full = new Mlp(16, 64, 8);
        var x = randn(64, 16);
        var fullProfile = TrainingProfile.Measure(full, () => full.call(x).pow(2).mean(), steps: 1);
        var lora = new Mlp(16, 64, 8);
        PeftModel.Create(lora, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 });
        var loraProfile = TrainingProfile.Measure(lora, () => lora.call(x).pow(2).mean(), steps: 1);

        Assert.Equal(fullProfile.ParameterBytes, fullProfile.GradientBytes);
        Assert.Equal(2 * fullProfile.ParameterBytes, fullProfile.OptimizerStateBytes);
        Assert.True(loraProfile.GradientBytes < fullProfile.GradientBytes / 4, $"LoRA's gradients take {loraProfile.GradientBytes} bytes, full fine-tuning's {fullProfile.GradientBytes}.");
    }

    [Fact]
    public void A_model_with_nothing_to_train_or_a_loss_that_is_not_a_scalar_is_refused_naming_the_fix()
    {
        var model = new Mlp(16, 64, 8);
        model.eval();
        foreach (var p in model.parameters()) p.requires_grad = false;
        var x = randn(8, 16);
        var frozen = Assert.Throws<ArgumentException>(() => TrainingProfile.Measure(model, () => model.call(x).mean()));
        Assert.Contains("requires_grad", frozen.Message);

        foreach (var p in model.parameters()) p.requires_grad = true;
        var vector = Assert.Throws<ArgumentException>(() => TrainingProfile.Measure(model, () => model.call(x)));
        Assert.Contains("scalar", vector.Message);
        Assert.False(model.training);
        Assert.Throws<ArgumentOutOfRangeException>(() => TrainingProfile.Measure(model, () => model.call(x).mean(), steps: 0));
    }
}

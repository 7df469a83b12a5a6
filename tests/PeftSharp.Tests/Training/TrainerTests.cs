using System.Globalization;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests.Training;

/// <summary>The training contract of <see cref="Trainer"/>: what trains, hooks, loss terms, gradient masks, a trainable
/// set that changes during the run, non-finite values caught before the optimizer step, and option validation.</summary>
public sealed class TrainerTests
{
    const int Batches = 6;

    // Fixed regression data for the Mlp (16 -> 8): batch i is (X[i], Y[i]), 4 rows each.
    sealed class Data : IDisposable
    {
        public Tensor X { get; } = randn(Batches, 4, 16);
        public Tensor Y { get; } = randn(Batches, 4, 8);

        public Tensor Loss(Module<Tensor, Tensor> model, int i) => functional.mse_loss(model.call(X[i]), Y[i]);

        public void Dispose()
        {
            X.Dispose();
            Y.Dispose();
        }
    }

    static List<int> Epoch(int _) => Enumerable.Range(0, Batches).ToList();

    static Mlp NewMlp(int seed)
    {
        manual_seed(seed);
        return new Mlp();
    }

    static Parameter ParameterAt(Module model, string path) => model.named_parameters().Single(p => p.name == path).parameter;

    // Two independent parameters (a, b); the loss Σ_p Σ (p − 1)² gives each its own gradient 2(p − 1), so a's trajectory
    // depends only on its own optimizer state, whatever happens to b or to parameters added later.
    sealed class Pieces : Module
    {
        readonly Parameter a;
        readonly Parameter b;

        public Pieces() : base(nameof(Pieces))
        {
            manual_seed(3);
            a = new Parameter(randn(3, 4));
            b = new Parameter(randn(5));
            RegisterComponents();
        }

        public Tensor Loss() => named_parameters().Select(p => (p.parameter - 1).pow(2).sum()).Aggregate((x, y) => x + y);
    }

    [Fact]
    public void Fit_on_a_PeftModel_trains_only_the_adapter_and_leaves_every_base_parameter_bit_for_bit_unchanged()
    {
        using var data = new Data();
        var model = NewMlp(1);
        var baseWeights = Tensors.Snapshot(model);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8 });
        var adapterBefore = Tensors.Snapshot(model).Where(p => p.Key.Contains("lora_")).ToDictionary();
        Assert.Equal(4, adapterBefore.Count);   // lora_A and lora_B of lin0 and lin1
        var progress = new List<TrainingProgress>();
        var trainer = new Trainer();
        trainer.Progress += progress.Add;

        var log = trainer.Fit(peft, Epoch, i => data.Loss(model, i), new TrainerOptions { Epochs = 2, LearningRate = 1e-2, WeightDecay = 0.1 });

        var after = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (path, weight) in baseWeights)
        {
            // Wrapped layers keep their base weights under base_layer.
            var now = after.Single(p => p.Key == path || p.Key == path.Replace("weight", "base_layer.weight").Replace("bias", "base_layer.bias")).Value;
            Assert.True(Tensors.Same(weight, now), $"base parameter {path} changed");
        }
        Assert.Contains(adapterBefore, p => !Tensors.Same(p.Value, after[p.Key]));
        Assert.Equal(peft.ParameterReport().TrainableParameters, log.TrainableParameters);
        Assert.StartsWith("lora 'default': ", log.Trains);
        Assert.Equal("lora 'default'", log.Name);
        Assert.All(progress, p => Assert.Equal(log.Trains, p.Trains));
        Assert.Equal(2 * Batches, log.Steps.Count);
    }

    [Fact]
    public void Fit_on_a_module_with_nothing_frozen_says_in_the_log_and_every_progress_event_that_every_parameter_trains()
    {
        using var data = new Data();
        var model = NewMlp(1);
        long all = model.parameters().Sum(p => p.numel());
        var progress = new List<TrainingProgress>();
        var trainer = new Trainer();
        trainer.Progress += progress.Add;

        var log = trainer.Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { MaxSteps = 2 });

        Assert.Equal(string.Create(CultureInfo.InvariantCulture, $"every parameter of the model ({all:N0})"), log.Trains);
        Assert.Equal(1.0, log.TrainableFraction);
        Assert.All(progress, p => Assert.Equal(log.Trains, p.Trains));
    }

    [Fact]
    public void Fit_refuses_a_PeftModel_whose_adapters_are_disabled_and_changes_nothing()
    {
        using var data = new Data();
        var model = NewMlp(1);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0"], R = 2 });
        var before = Tensors.Snapshot(model);
        using (peft.DisableAdapters())
        {
            var error = Assert.Throws<InvalidOperationException>(() =>
                new Trainer().Fit(peft, Epoch, i => data.Loss(model, i), new TrainerOptions { MaxSteps = 1 }));
            Assert.Contains("EnableAdapters()", error.Message);
        }
        foreach (var (path, p) in model.named_parameters()) Assert.True(Tensors.Same(before[path], p), $"{path} changed");
    }

    [Fact]
    public void The_trainers_AdamW_matches_TorchSharps_AdamW_with_clipping_and_weight_decay_step_for_step()
    {
        using var data = new Data();
        var ours = NewMlp(2);
        var theirs = NewMlp(2);
        var options = new TrainerOptions { Epochs = 3, LearningRate = 1e-2, WeightDecay = 0.01, MaxGradientNorm = 0.5 };

        var log = new Trainer().Fit(ours, Epoch, i => data.Loss(ours, i), options);

        using var optimizer = optim.AdamW(theirs.parameters(), lr: options.LearningRate, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: options.WeightDecay);
        var losses = new List<double>();
        for (int epoch = 0; epoch < options.Epochs; epoch++)
            foreach (int i in Epoch(epoch))
            {
                using var scope = NewDisposeScope();
                optimizer.zero_grad();
                var loss = data.Loss(theirs, i);
                losses.Add(loss.ToDouble());
                loss.backward();
                nn.utils.clip_grad_norm_(theirs.parameters(), 0.5);
                optimizer.step();
            }

        Assert.Equal(losses.Count, log.Steps.Count);
        for (int s = 0; s < losses.Count; s++) Assert.Equal(losses[s], log.Steps[s].Loss, 5);
        var expected = theirs.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (path, p) in ours.named_parameters()) Tensors.AssertClose(expected[path], p, 1e-6, path);
    }

    [Fact]
    public void An_extra_loss_term_adds_its_gradient_to_the_task_gradient_and_is_logged_under_its_name()
    {
        using var data = new Data();
        Tensor GradientOfHead(bool withTerm, out TrainingLog log)
        {
            var model = NewMlp(4);
            var head = ParameterAt(model, "head.weight");
            var trainer = new Trainer();
            if (withTerm) trainer.AddLossTerm("l2", () => 0.5 * head.pow(2).sum());   // gradient: head.weight itself
            Tensor? gradient = null;
            trainer.AfterBackward += c => gradient = head.grad!.clone().DetachFromDisposeScope();
            log = trainer.Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { MaxSteps = 1, MaxGradientNorm = null });
            return gradient!;
        }

        using var plain = GradientOfHead(false, out var plainLog);
        using var regularised = GradientOfHead(true, out var log);
        using var initialHead = ParameterAt(NewMlp(4), "head.weight").detach().clone();

        Tensors.AssertClose(initialHead, regularised - plain, 1e-6, "gradient of the loss term");
        Assert.Equal(plainLog.Steps[0].Loss, log.Steps[0].Loss, 12);   // Loss is the task loss alone
        double expected = 0.5 * initialHead.pow(2).sum().ToDouble();
        Assert.Equal(expected, log.Steps[0].Reported["l2"], 4);
        Assert.Equal(new[] { (1, log.Steps[0].Reported["l2"]) }, log.Series("l2"));
        Assert.Empty(plainLog.Series("l2"));
    }

    [Fact]
    public void After_backward_hooks_see_every_trainable_gradient_before_the_step_and_what_they_report_reaches_the_log()
    {
        using var data = new Data();
        var model = NewMlp(5);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 });
        var trainer = new Trainer();
        var seen = new List<int>();
        trainer.AfterBackward += c =>
        {
            seen.Add(c.Step);
            Assert.All(c.Parameters, p => Assert.True(p.Parameter.requires_grad, p.Name));
            Assert.DoesNotContain(c.Parameters, p => p.Parameter.grad is null);
            // AdaLoRA-style importance: Σ |p · grad| over the trainable parameters, before the update.
            c.Report("importance", c.Parameters.Sum(p => (p.Parameter * p.Parameter.grad!).abs().sum().ToDouble()));
            c.Report("lora_B_gradient", c.Parameters.Where(p => p.Name.Contains("lora_B")).Sum(p => p.Parameter.grad!.abs().sum().ToDouble()));
        };

        var log = trainer.Fit(peft, Epoch, i => data.Loss(model, i), new TrainerOptions { MaxSteps = 4, LearningRate = 1e-2 });

        Assert.Equal([1, 2, 3, 4], seen);
        Assert.Equal([1, 2, 3, 4], log.Series("importance").Select(s => s.Step));
        Assert.True(log.Series("lora_B_gradient")[0].Value > 0, "LoRA's B starts at zero but gets a gradient at the first step");
        Assert.Equal(0, log.Series("importance")[0].Value);   // p · grad is 0 at step 1: B = 0 and A's gradient is 0
        Assert.True(log.Series("importance")[3].Value > 0);
    }

    [Fact]
    public void After_step_hooks_can_freeze_unfreeze_and_add_parameters_and_the_others_keep_their_optimizer_state()
    {
        var options = new TrainerOptions { Epochs = 2, MaxSteps = 10, LearningRate = 0.05, MaxGradientNorm = null, WeightDecay = 0.01 };
        var reference = new Pieces();
        new Trainer().Fit(reference, Epoch, _ => reference.Loss(), options);

        var model = new Pieces();
        var a = ParameterAt(model, "a");
        var b = ParameterAt(model, "b");
        Tensor? bWhenFrozen = null, bBeforeUnfreezing = null;
        Parameter? c = null;
        var trainer = new Trainer();
        trainer.AfterStep += context =>
        {
            if (context.Step == 3)
            {
                b.requires_grad = false;
                bWhenFrozen = b.detach().clone().DetachFromDisposeScope();
                c = new Parameter(zeros(2));
                c.DetachFromDisposeScope();
                model.register_parameter("c", c);
            }
            if (context.Step == 6)
            {
                bBeforeUnfreezing = b.detach().clone().DetachFromDisposeScope();
                b.requires_grad = true;
            }
        };

        var log = trainer.Fit(model, Epoch, _ => model.Loss(), options);

        Tensors.AssertClose(ParameterAt(reference, "a"), a, 1e-7, "a, trained through the changes, vs an uninterrupted run");
        Assert.True(Tensors.Same(bWhenFrozen!, bBeforeUnfreezing!), "b changed while frozen");
        using (var zero = zeros(2)) Assert.False(Tensors.Same(zero, c!), "the added parameter did not train");
        Assert.Collection(log.TrainableSetChanges,
            change => { Assert.Equal(4, change.Step); Assert.Equal(["c"], change.Added); Assert.Equal(["b"], change.Removed); Assert.Equal(12 + 2, change.TrainableParameters); },
            change => { Assert.Equal(7, change.Step); Assert.Equal(["b"], change.Added); Assert.Empty(change.Removed); Assert.Equal(12 + 5 + 2, change.TrainableParameters); });
        Assert.False(Tensors.Same(bBeforeUnfreezing!, b), "b did not train after it was unfrozen");
        bWhenFrozen!.Dispose();
        bBeforeUnfreezing!.Dispose();
    }

    [Fact]
    public void Masked_gradient_entries_stay_exactly_unchanged_even_with_weight_decay()
    {
        using var data = new Data();
        var model = NewMlp(6);
        var weight = ParameterAt(model, "lin0.weight");
        using var before = weight.detach().clone();
        using var mask = rand(weight.shape) > 0.5;                            // (32, 16) bool, 1 = train
        var trainer = new Trainer();
        trainer.MaskGradient(weight, mask);

        trainer.Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { Epochs = 2, LearningRate = 1e-2, WeightDecay = 0.5 });

        using var frozen = mask.logical_not();
        Assert.True(Tensors.Same(before.masked_select(frozen), weight.detach().masked_select(frozen)), "a masked entry changed");
        using var changed = weight.detach().ne(before).masked_select(mask);
        Assert.True(changed.all().item<bool>(), "an unmasked entry did not train");
    }

    [Fact]
    public void A_mask_set_in_the_middle_of_a_run_keeps_those_entries_exactly_although_their_moments_are_not_zero()
    {
        using var data = new Data();
        var model = NewMlp(7);
        var weight = ParameterAt(model, "lin1.weight");
        using var mask = ones_like(weight);                                   // float mask, changed in place by the hook
        mask[0].fill_(0);
        Tensor? atMasking = null;
        var trainer = new Trainer();
        trainer.AfterStep += c =>
        {
            if (c.Step != 3) return;
            trainer.MaskGradient(weight, mask);
            atMasking = weight.detach().clone().DetachFromDisposeScope();
        };

        trainer.Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { Epochs = 2, LearningRate = 1e-2, WeightDecay = 0.1 });

        Assert.True(Tensors.Same(atMasking![0], weight.detach()[0]), "row 0 changed after it was masked");
        Assert.False(Tensors.Same(atMasking[1], weight.detach()[1]), "row 1 stopped training");
        atMasking.Dispose();
    }

    [Fact]
    public void A_NaN_loss_at_step_k_is_raised_naming_step_k_with_the_parameters_as_they_were_after_step_k_minus_1()
    {
        using var data = new Data();
        var model = NewMlp(8);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 });
        Dictionary<string, Tensor>? afterStep3 = null;
        var trainer = new Trainer();
        trainer.Progress += p => { if (p.Step == 3) afterStep3 = Tensors.Snapshot(model); };
        int calls = 0;

        var error = Assert.Throws<NonFiniteTrainingException>(() => trainer.Fit(peft, Epoch,
            i => ++calls == 4 ? data.Loss(model, i) * double.NaN : data.Loss(model, i), new TrainerOptions { MaxSteps = 6, LearningRate = 1e-2 }));

        Assert.Equal(4, error.Step);
        Assert.Equal("loss", error.What);
        Assert.StartsWith("Step 4: the loss is NaN", error.Message);
        Assert.Contains("after step 3", error.Message);
        foreach (var (path, p) in model.named_parameters()) Assert.True(Tensors.Same(afterStep3![path], p), $"{path} changed at the failing step");
    }

    [Fact]
    public void A_non_finite_loss_term_is_raised_naming_the_term()
    {
        using var data = new Data();
        var model = NewMlp(8);
        var trainer = new Trainer();
        trainer.AddLossTerm("penalty", () => tensor(double.PositiveInfinity));

        var error = Assert.Throws<NonFiniteTrainingException>(() => trainer.Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { MaxSteps = 2 }));

        Assert.Equal(1, error.Step);
        Assert.Equal("loss term 'penalty'", error.What);
        Assert.Contains("'penalty' is Infinity", error.Message);
    }

    [Fact]
    public void A_non_finite_gradient_is_raised_naming_the_parameter_and_nothing_is_updated()
    {
        using var data = new Data();
        var model = NewMlp(9);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 });
        var (path, target) = model.named_parameters().First(p => p.name.Contains("lin1") && p.name.Contains("lora_A"));
        Dictionary<string, Tensor>? afterStep1 = null;
        var trainer = new Trainer();
        trainer.Progress += p => { if (p.Step == 1) afterStep1 = Tensors.Snapshot(model); };
        int calls = 0;

        // At step 2: + Σ √(p − p) = 0 adds nothing to the loss, but the derivative of √x at 0 is +∞.
        var error = Assert.Throws<NonFiniteTrainingException>(() => trainer.Fit(peft, Epoch,
            i => ++calls == 2 ? data.Loss(model, i) + (target - target.detach()).sqrt().sum() : data.Loss(model, i),
            new TrainerOptions { MaxSteps = 4 }));

        Assert.Equal(2, error.Step);
        Assert.Equal(path, error.ParameterName);
        Assert.Contains($"the gradient of '{path}' has {target.numel()} non-finite entries", error.Message);
        foreach (var (name, p) in model.named_parameters()) Assert.True(Tensors.Same(afterStep1![name], p), $"{name} changed at the failing step");
    }

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    [InlineData(-1e-3)]
    [InlineData(0.0)]
    public void A_learning_rate_that_is_not_a_positive_finite_number_is_refused_naming_LearningRate(double learningRate)
    {
        using var data = new Data();
        var model = NewMlp(1);
        var before = Tensors.Snapshot(model);

        var error = Assert.Throws<ArgumentOutOfRangeException>(() =>
            new Trainer().Fit(model, Epoch, i => data.Loss(model, i), new TrainerOptions { LearningRate = learningRate }));

        Assert.Equal("LearningRate", error.ParamName);
        Assert.Contains("TrainerOptions.LearningRate is", error.Message);
        Assert.Contains("positive finite number", error.Message);
        foreach (var (path, p) in model.named_parameters()) Assert.True(Tensors.Same(before[path], p), $"{path} changed");
    }

    [Fact]
    public void Other_non_finite_options_are_refused_naming_the_option()
    {
        Assert.Equal("WeightDecay", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { WeightDecay = double.NaN }.Validate()).ParamName);
        Assert.Equal("WeightDecay", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { WeightDecay = -0.1 }.Validate()).ParamName);
        Assert.Equal("MaxGradientNorm", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { MaxGradientNorm = double.NaN }.Validate()).ParamName);
        Assert.Equal("MaxGradientNorm", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { MaxGradientNorm = double.PositiveInfinity }.Validate()).ParamName);
        Assert.Equal("WarmupFraction", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { WarmupFraction = double.NaN }.Validate()).ParamName);
        Assert.Equal("EvaluateEvery", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainerOptions { EvaluateEvery = 0 }.Validate()).ParamName);
        new TrainerOptions { WeightDecay = 0.01, MaxGradientNorm = null, WarmupFraction = 0.1, EvaluateEvery = 5 }.Validate();
    }

    [Fact]
    public void A_gradient_mask_of_the_wrong_shape_is_refused_naming_both_shapes()
    {
        var model = NewMlp(1);
        using var mask = ones(16, 32);
        var error = Assert.Throws<ArgumentException>(() => new Trainer().MaskGradient(ParameterAt(model, "lin0.weight"), mask));
        Assert.Contains("[16, 32]", error.Message);
        Assert.Contains("[32, 16]", error.Message);
    }

    [Fact]
    public void Steps_with_loss_terms_hooks_masks_and_a_changing_trainable_set_leak_no_tensors()
    {
        using var data = new Data();
        var model = NewMlp(10);
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 });
        var loraB = model.named_parameters().First(p => p.name.Contains("lora_B")).parameter;
        using var mask = ones_like(loraB);
        var trainer = new Trainer();
        trainer.AddLossTerm("l2", () => 1e-3 * loraB.pow(2).sum());
        trainer.MaskGradient(loraB, mask);
        trainer.AfterBackward += c => c.Report("gradient", loraB.grad!.abs().sum().ToDouble());
        trainer.AfterStep += c => { if (c.Step == 1) ParameterAt(model, "head.bias").requires_grad = true; };
        var live = new Dictionary<int, long>();
        trainer.Progress += p => { if (p.Step == 3 || p.Step == p.TotalSteps) live[p.Step] = DisposeScopeManager.Statistics.ThreadTotalLiveCount; };

        var log = trainer.Fit(peft, Epoch, i => data.Loss(model, i), new TrainerOptions { Epochs = 3, WeightDecay = 0.01 });

        Assert.Equal(live[3], live[log.Steps.Count]);
        Assert.Single(log.TrainableSetChanges);
    }
}

using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Data;
using PeftSharp.Methods.Decomposition;
using PeftSharp.Methods.LowRank;
using PeftSharp.Methods.Routing;
using PeftSharp.Models;
using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Analysis;

public sealed class HonestComparisonTests
{
    static TrainingLog Log(string name, params double[] losses)
    {
        var log = new TrainingLog(name, 10, 100);
        for (int i = 0; i < losses.Length; i++) log.Add(new TrainingStep(i + 1, 0, losses[i], 1e-3, null, TimeSpan.FromSeconds(i)));
        log.Duration = TimeSpan.FromSeconds(losses.Length);
        return log;
    }

    static RunResult Run(string name, int seed, double score) => new(name, seed, score, "accuracy", 200, Log(name, 1, 0.5));

    [Fact]
    public void A_row_over_seeds_gives_the_mean_the_sample_standard_deviation_and_the_standard_error()
    {
        var row = new ComparisonRow("LoRA", 10, 100, [0.80, 0.82, 0.84], TimeSpan.FromSeconds(3), 1000);
        Assert.Equal(0.82, row.Score, 12);
        Assert.Equal(0.02, row.StandardDeviation, 12);                      // sqrt((0.0004 + 0 + 0.0004) / 2)
        Assert.Equal(0.02 / Math.Sqrt(3), row.StandardError, 12);
        Assert.Equal(3, row.Seeds);

        var single = new ComparisonRow("head", 1, 100, 0.7, TimeSpan.Zero, 0);   // the one-run constructor notebooks 03/04 use
        Assert.Equal(0.7, single.Score);
        Assert.Equal(0, single.StandardDeviation);
        Assert.Throws<ArgumentException>(() => new ComparisonRow("none", 1, 1, Array.Empty<double>(), TimeSpan.Zero, 0));
        Assert.Throws<ArgumentException>(() => new ComparisonRow("nan", 1, 1, double.NaN, TimeSpan.Zero, 0));
    }

    [Fact]
    public void A_comparison_takes_harness_runs_as_one_row_in_seed_order_with_the_evaluation_size()
    {
        var comparison = new MethodComparison("t").Add([Run("LoRA", 2, 0.9), Run("LoRA", 1, 0.8)]);
        var row = comparison["LoRA"];
        Assert.Equal([0.8, 0.9], row.Scores);
        Assert.Equal([1, 2], row.SeedValues!);
        Assert.Equal(200, comparison.EvaluationExamples);
        Assert.Equal("2 seeds, 200 evaluation examples", comparison.Basis);
        Assert.Throws<ArgumentException>(() => comparison.Add([Run("DoRA", 1, 0.9), Run("LoRA", 2, 0.8)]));        // two names
        Assert.Throws<ArgumentException>(() => comparison.Add([Run("DoRA", 1, 0.9), Run("DoRA", 1, 0.8)]));        // a seed twice
        Assert.Throws<ArgumentException>(() => comparison.Add([new RunResult("DoRA", 1, 0.9, "accuracy", 50, Log("DoRA", 1))]));   // another evaluation set
        Assert.Contains("'LoRA'", Assert.Throws<KeyNotFoundException>(() => comparison["PiSSA"]).Message);
    }

    [Fact]
    public void A_claim_holds_only_when_the_paired_difference_is_more_than_two_standard_errors()
    {
        var claim = new Claim("DoRA beats LoRA", "Liu et al. 2024");
        // Differences 0.05, 0.06, 0.04: mean 0.05, SE 0.0058 -> large.
        var held = claim.Check("DoRA", [0.85, 0.86, 0.84], "LoRA", [0.80, 0.80, 0.80], "accuracy");
        Assert.Equal(ClaimOutcome.Held, held.Outcome);
        Assert.Equal(0.05, held.MeanDifference, 12);
        Assert.Equal(0.01 / Math.Sqrt(3), held.StandardError, 12);
        Assert.StartsWith("held at this scale: Δ accuracy (DoRA − LoRA) = +0.05 ± 0.0058 over 3 seeds", held.Summary);

        // Differences +0.03, -0.02, +0.02: mean 0.01, SE 0.0153 -> within the noise, whatever the sign of the mean.
        var noise = claim.Check("DoRA", [0.83, 0.78, 0.82], "LoRA", [0.80, 0.80, 0.80], "accuracy");
        Assert.Equal(ClaimOutcome.WithinNoise, noise.Outcome);
        Assert.False(noise.IsLarge);
        Assert.StartsWith("not shown at this scale", noise.Summary);   // not "did not hold": nothing contradicted the claim
        Assert.Contains("within 2 standard errors", noise.Summary);

        var opposite = claim.Check("DoRA", [0.75, 0.76, 0.74], "LoRA", [0.80, 0.80, 0.80], "accuracy");
        Assert.Equal(ClaimOutcome.DidNotHold, opposite.Outcome);
        Assert.StartsWith("did not hold at this scale", opposite.Summary);

        var oneSeed = claim.Check("DoRA", [0.95], "LoRA", [0.80], "accuracy");
        Assert.Equal(ClaimOutcome.WithinNoise, oneSeed.Outcome);
        Assert.Contains("one seed", oneSeed.Summary);
    }

    [Fact]
    public void A_claim_on_a_loss_counts_lower_as_better_and_a_margin_turns_better_into_no_worse_than()
    {
        var faster = new Claim("PiSSA converges faster than LoRA");
        Assert.Equal(ClaimOutcome.Held, faster.Check("PiSSA", [0.50, 0.52, 0.51], "LoRA", [0.60, 0.61, 0.62], "mean training loss", higherIsBetter: false).Outcome);
        Assert.Equal(ClaimOutcome.DidNotHold, faster.Check("PiSSA", [0.70, 0.72, 0.71], "LoRA", [0.60, 0.61, 0.62], "mean training loss", higherIsBetter: false).Outcome);

        var close = new Claim("LoRA comes within one point of full fine-tuning");
        double[] lora = [0.795, 0.797, 0.796], full = [0.80, 0.80, 0.80];   // 0.4 points behind, tightly
        Assert.Equal(ClaimOutcome.DidNotHold, close.Check("LoRA", lora, "full", full, "accuracy").Outcome);   // "better" fails
        var within = close.Check("LoRA", lora, "full", full, "accuracy", margin: 0.01);
        Assert.Equal(ClaimOutcome.Held, within.Outcome);
        Assert.Contains("above the threshold -0.01", within.Summary);
    }

    [Fact]
    public void A_claim_from_one_run_each_is_paired_over_the_evaluation_examples_and_says_that_training_noise_is_not_in_it()
    {
        var claim = new Claim("LoRA is more accurate than the head alone");
        // 400 examples: both right on 300, only LoRA right on 60, only the head on 20, both wrong on 20.
        bool[] lora = [.. Enumerable.Repeat(true, 300), .. Enumerable.Repeat(true, 60), .. Enumerable.Repeat(false, 20), .. Enumerable.Repeat(false, 20)];
        bool[] head = [.. Enumerable.Repeat(true, 300), .. Enumerable.Repeat(false, 60), .. Enumerable.Repeat(true, 20), .. Enumerable.Repeat(false, 20)];
        var verdict = claim.CheckOnExamples("LoRA", lora, "head", head);
        double mean = 40.0 / 400, variance = (80 * 1.0 - 400 * mean * mean) / 399;   // Σd² = 80 discordant examples
        Assert.Equal(mean, verdict.MeanDifference, 12);
        Assert.Equal(Math.Sqrt(variance / 400), verdict.StandardError, 12);
        Assert.Equal(ClaimOutcome.Held, verdict.Outcome);
        Assert.Equal(0.9, verdict.TreatmentMean, 12);
        Assert.Equal(0.8, verdict.BaselineMean, 12);
        Assert.Equal(ClaimUnit.EvaluationExample, verdict.Unit);
        Assert.Contains("over 400 evaluation examples paired, one training run each (the noise between training seeds is not measured)", verdict.Summary);

        // 6 only-LoRA against 4 only-head: a 0.5-point gap is within the noise of 400 examples.
        bool[] close = [.. Enumerable.Repeat(true, 6), .. Enumerable.Repeat(false, 4), .. Enumerable.Repeat(true, 390)];
        bool[] other = [.. Enumerable.Repeat(false, 6), .. Enumerable.Repeat(true, 4), .. Enumerable.Repeat(true, 390)];
        Assert.Equal(ClaimOutcome.WithinNoise, claim.CheckOnExamples("LoRA", close, "head", other).Outcome);
        Assert.Throws<ArgumentException>(() => claim.CheckOnExamples("LoRA", close, "head", other.Take(399).ToArray()));
    }

    [Fact]
    public void A_single_seed_accuracy_row_carries_the_sampling_error_of_its_evaluation_set()
    {
        var comparison = new MethodComparison("t", evaluationExamples: 450).Add(new ComparisonRow("LoRA", 10, 100, 0.8, TimeSpan.Zero, 0));
        Assert.Equal(Math.Sqrt(0.8 * 0.2 / 450), comparison.SamplingStandardError(comparison["LoRA"])!.Value, 12);
        Assert.Null(new MethodComparison("t", "perplexity", higherIsBetter: false, evaluationExamples: 450)
            .Add(new ComparisonRow("LoRA", 10, 100, 31.5, TimeSpan.Zero, 0)).SamplingStandardError(new ComparisonRow("LoRA", 10, 100, 31.5, TimeSpan.Zero, 0)));
        Assert.Null(new MethodComparison("t").Add(new ComparisonRow("LoRA", 10, 100, 0.8, TimeSpan.Zero, 0)).SamplingStandardError(comparison["LoRA"]));
        Assert.True(comparison.ShowsSamplingError);
        Assert.False(new MethodComparison("t").Add(new ComparisonRow("LoRA", 10, 100, 0.8, TimeSpan.Zero, 0)).ShowsSamplingError);   // n unknown
        Assert.False(new MethodComparison("t", evaluationExamples: 450).Add(new ComparisonRow("LoRA", 10, 100, [0.8, 0.82], TimeSpan.Zero, 0)).ShowsSamplingError);   // seeds give the bars
    }

    [Fact]
    public void A_claim_refuses_rows_that_ran_different_seeds()
    {
        var comparison = new MethodComparison("t").Add([Run("A", 1, 0.9), Run("A", 2, 0.8)]).Add([Run("B", 1, 0.9), Run("B", 3, 0.8)]);
        var e = Assert.Throws<ArgumentException>(() => new Claim("A beats B").Check(comparison, "A", "B"));
        Assert.Contains("same seeds", e.Message);
    }

    [Fact]
    public void A_loss_band_averages_runs_step_by_step_over_the_steps_all_of_them_reached()
    {
        var band = LossBand.Of("LoRA", [Log("a", 4, 2, 1), Log("b", 2, 2, 3, 9)]);
        Assert.Equal([1, 2, 3], band.Steps);
        Assert.Equal([3.0, 2.0, 2.0], band.Mean);
        Assert.Equal(Math.Sqrt(2), band.StandardDeviation[0], 12);
        Assert.Equal(0, band.StandardDeviation[1], 12);
        Assert.Equal([7.0 / 3, 7.0 / 3], band.RunMeanLosses);
        Assert.Equal(2, band.Runs);

        var smooth = LossBand.Of("LoRA", [Log("a", 4, 2, 1)], smoothing: 2);
        Assert.Equal([4.0, 3.0, 1.5], smooth.Mean);

        var curves = LossCurves.FromRuns("t", [Run("A", 1, 0), Run("B", 1, 0), Run("A", 2, 0)]);
        Assert.Equal(["A", "B"], curves.Bands.Select(b => b.Name));
        Assert.Equal(2, curves["A"].Runs);
    }

    [Fact]
    public void A_labelled_heatmap_checks_its_shape_and_finds_values_by_label()
    {
        var map = new LabelledHeatmap("scales", ["uniform", "vector"], ["t0", "t1", "t2"], [[-0.5, 1, 0], [0.2, 0.3, 0.4]], "variant", "source", "scale");
        Assert.Equal(-0.5, map["uniform", "t0"]);
        Assert.True(map.HasBothSigns);
        var t = map.Transposed();
        Assert.Equal(["t0", "t1", "t2"], t.Rows);
        Assert.Equal(0.4, t["t2", "vector"]);
        Assert.Equal("source", t.RowKind);
        Assert.Contains("2 values for 3 columns", Assert.Throws<ArgumentException>(() =>
            new LabelledHeatmap("bad", ["a"], ["x", "y", "z"], [[1.0, 2.0]])).Message);
        Assert.Throws<ArgumentException>(() => new LabelledHeatmap("nan", ["a"], ["x"], [[double.NaN]]));
        Assert.Contains("'t1'", Assert.Throws<KeyNotFoundException>(() => map["uniform", "t9"]).Message);
        var routing = LabelledHeatmap.FromRouting(new RoutingLayer("lin0", ["0", "1"], ["a", "b"], [[0.25, 0.75], [1, 0]]), "example");
        Assert.Equal("expert", routing.ColumnKind);
        Assert.False(routing.HasBothSigns);
    }

    [Fact]
    public void The_full_setting_is_chosen_by_the_environment_variable_only()
    {
        var before = Environment.GetEnvironmentVariable(RunSettings.FullVariable);
        try
        {
            Environment.SetEnvironmentVariable(RunSettings.FullVariable, null);
            Assert.True(RunSettings.Quick);
            Assert.Equal(3, RunSettings.Pick(quick: 3, full: 10));
            Environment.SetEnvironmentVariable(RunSettings.FullVariable, "1");
            Assert.True(RunSettings.Full);
            Assert.Equal(10, RunSettings.Pick(quick: 3, full: 10));
            Environment.SetEnvironmentVariable(RunSettings.FullVariable, "0");
            Assert.True(RunSettings.Quick);
        }
        finally
        {
            Environment.SetEnvironmentVariable(RunSettings.FullVariable, before);
        }
    }

    [Fact]
    public void The_harness_trains_a_real_lora_per_seed_and_repeats_a_seed_exactly()
    {
        var train = MultiTaskSet.FromDataFrame(Datasets.MultiTask(Split.Train));
        var test = MultiTaskSet.FromDataFrame(Datasets.MultiTask(Split.Test));
        var harness = new TrainingHarness<Mlp, Batch<MultiTaskTensors>>(
            (seed, epoch) => train.Batches(64, seed: (ulong)(1000 * seed + epoch)),
            (m, b) => { var t = b.ToTensors(); return nn.functional.cross_entropy(m.call(t.Inputs), t.Labels); },
            m => { var t = test.All().ToTensors(); return Metrics.AccuracyFromLogits(m.call(t.Inputs), t.Labels); },
            evaluationExamples: test.Count);
        Mlp Create()
        {
            var mlp = new Mlp(16, 32, 4);
            PeftModel.Create(mlp, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2, ModulesToSave = ["head"] });
            return mlp;
        }
        var options = new TrainerOptions { MaxSteps = 40, Epochs = 5, LearningRate = 1e-2 };
        int steps = 0;
        harness.Progress += (name, _) => steps++;
        var runs = harness.RunSeeds("LoRA r=2", [1, 2], Create, options);
        var again = harness.Run("LoRA r=2", 1, Create, options);

        Assert.Equal(120, steps);   // 2 seeds x 40 steps, then 40 more for the repeat
        Assert.All(runs, r => Assert.InRange(r.Score, 0.3, 1.0));   // four classes: chance is 0.25
        Assert.All(runs, r => Assert.True(r.Log.LastLoss < r.Log.FirstLoss, $"seed {r.Seed}: the loss did not fall"));
        Assert.Equal(test.Count, runs[0].EvaluationExamples);
        Assert.True(runs[0].TrainableParameters < runs[0].AllParameters);
        Assert.NotEqual(runs[0].Log.Steps.Select(s => s.Loss), runs[1].Log.Steps.Select(s => s.Loss));   // seeds differ
        Assert.Equal(runs[0].Log.Steps.Select(s => s.Loss), again.Log.Steps.Select(s => s.Loss));        // a seed repeats
        Assert.Equal(runs[0].Score, again.Score);

        var comparison = new MethodComparison("multi-task, LoRA").Add(runs);
        Assert.Equal(2, comparison["LoRA r=2"].Seeds);
        Assert.Null(comparison["LoRA r=2"].PeakMemoryBytes);        // not asked for, so not shown as a number

        var measuring = new TrainingHarness<Mlp, Batch<MultiTaskTensors>>((seed, epoch) => train.Batches(64, seed: (ulong)seed),
            (m, b) => { var t = b.ToTensors(); return nn.functional.cross_entropy(m.call(t.Inputs), t.Labels); },
            m => 0.5, evaluationExamples: 1, measureMemory: true);
        var measured = measuring.Run("LoRA r=2", 1, Create, options with { MaxSteps = 5 });
        Assert.True(measured.MemoryMeasured);
        Assert.NotNull(measured.PeakMemoryBytes);
        Assert.NotNull(ComparisonRow.FromRuns([measured]).PeakMemoryBytes);
        Assert.Throws<ArgumentException>(() => harness.RunSeeds("x", [1, 1], Create, options));
    }

    [Fact]
    public void The_harness_hands_each_run_its_trainer_so_a_loss_term_such_as_molas_load_balancing_trains_with_it()
    {
        var harness = MultiTaskHarness();
        PeftModel? peft = null;
        Mlp Create() => MlpWith(new MolaConfig { TargetModules = ["lin0", "lin1"], R = 2, NumExperts = 3, TopK = 2 }, out peft);
        var options = new TrainerOptions { MaxSteps = 6, Epochs = 1, LearningRate = 1e-2 };
        var seen = new List<Mlp>();
        var runs = harness.RunSeeds("MoLA", [1, 2], Create, options, beforeTraining: (model, trainer) =>
        {
            seen.Add(model);
            trainer.AddLossTerm("load balance", () => 0.01 * Mola.LoadBalancingLoss(peft!));
        });
        Assert.Equal(2, seen.Count);
        Assert.All(runs, r => Assert.All(r.Log.Steps, s => Assert.InRange(s.Reported["load balance"], 0.01 * 2 - 1e-6, 0.01 * 3 + 1e-6)));
        // Without the hook nothing is reported: the term came from it, and the logged loss stays the task loss.
        Assert.All(harness.Run("MoLA", 1, Create, options).Log.Steps, s => Assert.False(s.Reported.ContainsKey("load balance")));
    }

    [Fact]
    public void The_harness_lets_a_run_add_sorsas_regulariser_and_report_a_number_every_step()
    {
        var harness = MultiTaskHarness();
        PeftModel? peft = null;
        Mlp Create() => MlpWith(new SorsaConfig { TargetModules = ["lin0", "lin1"], R = 2, Gamma = 0.1 }, out peft);
        var options = new TrainerOptions { MaxSteps = 12, Epochs = 5, LearningRate = 1e-2 };
        var seen = new List<Mlp>();
        var runs = harness.RunSeeds("SORSA", [3, 4], Create, options, beforeTraining: (model, trainer) =>
        {
            seen.Add(model);
            SorsaRegularizer.AddTo(trainer, peft!);
            trainer.AfterStep += step => step.Report("deviation", SorsaRegularizer.Deviation(peft!));
        });
        var plain = harness.Run("SORSA without the hook", 3, Create, options);

        Assert.Equal(2, seen.Count);   // once per seed
        foreach (var run in runs)
        {
            Assert.Equal(12, run.Log.Series(SorsaRegularizer.TermName).Count);   // the loss term was added on every step
            var deviation = run.Log.Series("deviation");
            Assert.Equal(12, deviation.Count);
            Assert.True(deviation[^1].Value > 0, "training moved U_p and V_p off orthonormal, and the report saw it");
        }
        Assert.Empty(plain.Log.Series(SorsaRegularizer.TermName));          // a run without the hook has no term
        // Same seed, same batches: the first step's task loss is the same, later ones differ because the term changed the gradients.
        Assert.Equal(runs[0].Log.Steps[0].Loss, plain.Log.Steps[0].Loss, 6);
        Assert.NotEqual(runs[0].Log.Steps[^1].Loss, plain.Log.Steps[^1].Loss);
    }

    // A harness that trains an MLP on the multi-task suite's training split (a mean score of 0.5 stands in for an
    // evaluation: these tests look at the training logs).
    static TrainingHarness<Mlp, Batch<MultiTaskTensors>> MultiTaskHarness()
    {
        var train = MultiTaskSet.FromDataFrame(Datasets.MultiTask(Split.Train));
        return new TrainingHarness<Mlp, Batch<MultiTaskTensors>>(
            (seed, epoch) => train.Batches(64, seed: (ulong)(1000 * seed + epoch)),
            (m, b) => { var t = b.ToTensors(); return nn.functional.cross_entropy(m.call(t.Inputs), t.Labels); },
            m => 0.5, evaluationExamples: 1);
    }

    // A 16-32-4 MLP with an adapter of the given config; the PeftModel comes back through peft for the hooks.
    static Mlp MlpWith(AdapterConfig config, out PeftModel peft)
    {
        var mlp = new Mlp(16, 32, 4);
        peft = PeftModel.Create(mlp, config);
        return mlp;
    }
}

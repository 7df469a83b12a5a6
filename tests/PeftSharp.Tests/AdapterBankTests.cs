using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>Adapter banks: LDA's per-domain best checkpoints assembled into one model, MOS's EMA merging of a task
/// adapter, and MOS's self-refined retrieval of the adapter by prototypes.</summary>
public sealed class AdapterBankTests
{
    static readonly LoraConfig Config = new() { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random };

    static PeftModel TwoDomains()
    {
        manual_seed(12);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, Config, "news");
        peft.AddAdapter("romance", Config);
        return peft;
    }

    // Sets every parameter of the adapter to one value, so a checkpoint is recognisable by it.
    static void Fill(PeftModel peft, string adapter, float value)
    {
        using var _ = no_grad();
        foreach (var p in AdapterState.Live(peft, adapter).Values) p.fill_(value);
    }

    static float ValueOf(PeftModel peft, string adapter)
    {
        var values = AdapterState.Live(peft, adapter).Values.Select(p => (p.min().item<float>(), p.max().item<float>())).Distinct().ToList();
        Assert.Single(values);
        Assert.Equal(values[0].Item1, values[0].Item2);
        return values[0].Item1;
    }

    [Fact]
    public void The_bank_assembles_each_domain_from_its_own_best_step()
    {
        var peft = TwoDomains();
        using var bank = new AdapterBank();   // lower is better (perplexity)
        // news peaks at step 20, romance at step 10: asynchronous peaks.
        var perplexity = new Dictionary<(string, int), double> { [("news", 10)] = 50, [("news", 20)] = 40, [("news", 30)] = 45, [("romance", 10)] = 30, [("romance", 20)] = 35, [("romance", 30)] = 38 };
        foreach (int step in new[] { 10, 20, 30 })
            foreach (var domain in new[] { "news", "romance" })
            {
                Fill(peft, domain, step);
                bank.Offer(domain, peft, domain, step, perplexity[(domain, step)]);
            }
        Assert.Equal((20, 40.0), (bank.Best("news").Step, bank.Best("news").Score));
        Assert.Equal((10, 30.0), (bank.Best("romance").Step, bank.Best("romance").Score));
        Assert.Equal([true, true, true, false, false, false], bank.History.Select(e => e.Kept));
        Assert.Equal([(10, 50.0), (20, 40.0), (30, 45.0)], bank.Curve("news"));

        // The last checkpoint is in the model now; assembling puts each domain's best back.
        Assert.Equal((30f, 30f), (ValueOf(peft, "news"), ValueOf(peft, "romance")));
        bank.Assemble(peft);
        Assert.Equal((20f, 10f), (ValueOf(peft, "news"), ValueOf(peft, "romance")));
    }

    [Fact]
    public void An_assembled_model_computes_what_the_best_checkpoints_computed()
    {
        var peft = TwoDomains();
        using var x = randn(4, 16);
        string[] rows = ["news", "romance", "romance", "news"];
        using var bank = new AdapterBank(higherIsBetter: true);
        bank.Offer("news", peft, "news", 1, 0.9);
        bank.Offer("romance", peft, "romance", 1, 0.8);
        using var best = peft.Forward(x, rows);
        Tensors.PerturbAdapters(peft, "news");
        Tensors.PerturbAdapters(peft, "romance");
        bank.Offer("news", peft, "news", 2, 0.5);      // worse: not kept
        bank.Offer("romance", peft, "romance", 2, 0.7);
        using (var later = peft.Forward(x, rows)) Tensors.AssertDifferent(best, later, "the later checkpoints");
        bank.Assemble(peft);
        using var assembled = peft.Forward(x, rows);
        Tensors.AssertEqual(best, assembled, "the assembled bank");
    }

    [Fact]
    public void The_bank_refuses_what_it_cannot_rank_or_place()
    {
        var peft = TwoDomains();
        using var bank = new AdapterBank();
        Assert.Contains("not finite", Assert.Throws<ArgumentOutOfRangeException>(() => bank.Offer("news", peft, "news", 1, double.NaN)).Message);
        bank.Offer("news", peft, "news", 1, 10);
        Assert.Contains("one domain has one adapter", Assert.Throws<ArgumentException>(() => bank.Offer("news", peft, "romance", 2, 5)).Message);
        Assert.Contains("no checkpoint of domain 'fiction'", Assert.Throws<KeyNotFoundException>(() => bank.Best("fiction")).Message);
        Assert.Contains("no adapter 'poetry'", Assert.Throws<ArgumentException>(() => bank.Offer("poetry", peft, "poetry", 1, 5)).Message);

        // A model whose adapter has another rank does not take the bank, and nothing is written.
        manual_seed(12);
        var other = PeftModel.Create(new Mlp(), Config with { R = 2 }, "news");
        Fill(other, "news", 7);
        Assert.Contains("has shape", Assert.Throws<ArgumentException>(() => bank.Assemble(other)).Message);
        Assert.Equal(7f, ValueOf(other, "news"));
    }

    [Fact]
    public void The_ema_follows_the_adapter_from_the_previous_tasks_merged_values()
    {
        var peft = TwoDomains();
        Fill(peft, "romance", 1);
        var previous = AdapterState.Capture(peft, "romance");   // θ̂_{t-1} = 1 everywhere
        Fill(peft, "news", 5);                                  // θ_t = 5, held still
        using var ema = new AdapterEma(peft, "news", decay: 0.5, start: previous);
        for (int i = 0; i < 3; i++) ema.Update();
        // θ̂ = β³·1 + (1 − β³)·5 = 0.125 + 4.375 = 4.5
        ema.CopyInto("romance");
        Assert.Equal(4.5f, ValueOf(peft, "romance"));
        Assert.Equal(5f, ValueOf(peft, "news"));
        Assert.Equal(3, ema.Updates);
        var captured = ema.Capture();
        Assert.All(captured.Values, t => Assert.Equal(4.5f, t.max().item<float>()));
        AdapterState.DisposeAll(captured.Values);
        AdapterState.DisposeAll(previous.Values);

        Assert.Contains("[0, 1)", Assert.Throws<ArgumentOutOfRangeException>(() => new AdapterEma(peft, "news", decay: 1)).Message);
    }

    // Two tasks of two classes in 2-D features. Prototypes: class 0 (1, 0), class 1 (0, 1) of task 0; class 2 (−1, 0),
    // class 3 (0, −1) of task 1.
    static readonly Tensor Prototypes = tensor(new float[] { 1, 0, 0, 1, -1, 0, 0, -1 }).view(4, 2);
    static readonly int[] ClassTask = [0, 0, 1, 1];

    [Fact]
    public void Retrieval_corrects_a_wrong_first_pick_by_the_picked_adapters_own_prediction()
    {
        // Row 0 is class 2. The first look wrongly picks task 0; under task 0's adapter its feature points to class 2
        // (task 1), and under task 1's adapter too: two looks, right answer. Row 1 (class 1) is picked right at once.
        using var first = tensor(new long[] { 0, 0 });
        using var features = tensor(new float[]
        {
            -0.9f, 0.1f,   -1f, 0.05f,     // row 0 under task 0, task 1
            0.1f, 1f,      1f, 1f,         // row 1 under task 0, task 1
        }).view(2, 2, 2);
        using var result = SelfRefinedRetrieval.Predict(first, features, Prototypes, ClassTask);
        Assert.Equal([2L, 1L], result.Predictions.data<long>().ToArray());
        Assert.Equal([1L, 0L], result.Tasks.data<long>().ToArray());
        Assert.Equal([2L, 1L], result.Iterations.data<long>().ToArray());
        Assert.Equal([0L, 0L], result.FirstTasks.data<long>().ToArray());
    }

    [Fact]
    public void Retrieval_stops_after_the_most_looks_allowed()
    {
        // Each adapter points to the other task's class: the retrieval would cycle, so it stops at maxIterations and
        // keeps the last look's prediction.
        using var first = tensor(new long[] { 0 });
        using var features = tensor(new float[] { -1, 0, 1, 0 }).view(1, 2, 2);   // task 0 → class 2, task 1 → class 0
        using var three = SelfRefinedRetrieval.Predict(first, features, Prototypes, ClassTask, maxIterations: 3);
        Assert.Equal((3L, 2L, 0L), (three.Iterations[0].item<long>(), three.Predictions[0].item<long>(), three.Tasks[0].item<long>()));
        using var one = SelfRefinedRetrieval.Predict(first, features, Prototypes, ClassTask, maxIterations: 1);
        Assert.Equal((1L, 2L, 0L), (one.Iterations[0].item<long>(), one.Predictions[0].item<long>(), one.Tasks[0].item<long>()));
    }

    [Fact]
    public void Prototypes_are_class_means_and_every_class_needs_rows()
    {
        using var features = tensor(new float[] { 1, 2, 3, 4, 10, 10 }).view(3, 2);
        using var labels = tensor(new long[] { 0, 0, 1 });
        using var prototypes = SelfRefinedRetrieval.Prototypes(features, labels, classes: 2);
        Assert.Equal([2f, 3f, 10f, 10f], prototypes.data<float>().ToArray());
        Assert.Contains("Class(es) 2", Assert.Throws<ArgumentException>(() => SelfRefinedRetrieval.Prototypes(features, labels, classes: 3)).Message);

        using var first = tensor(new long[] { 0 });
        using var taskFeatures = zeros(1, 2, 2);
        Assert.Contains("one task per class", Assert.Throws<ArgumentException>(() => SelfRefinedRetrieval.Predict(first, taskFeatures, Prototypes, [0, 1])).Message);
        Assert.Contains("outside the 2 tasks", Assert.Throws<ArgumentException>(() => SelfRefinedRetrieval.Predict(first, taskFeatures, Prototypes, [0, 0, 1, 2])).Message);
    }
}

/// <summary>A bank offered checkpoints for a whole training run, an EMA updated every step and retrieval at every test
/// batch must not grow the process: repeated cycles leave no live tensors.</summary>
public sealed class AdapterBankLeakTests
{
    [Fact]
    public void Offering_assembling_averaging_and_retrieving_repeatedly_leave_no_live_tensors()
    {
        manual_seed(12);
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random }, "news");
        using var bank = new AdapterBank();
        using var ema = new AdapterEma(peft, "news", decay: 0.9);
        using var prototypes = randn(4, 8);
        using var features = randn(6, 2, 8);
        using var labels = tensor(new long[] { 0, 1, 2, 3, 0, 1 });
        int step = 0;
        void Cycle()
        {
            step++;
            bank.Offer("news", peft, "news", step, score: step % 3);   // kept on every third step, refused between
            bank.Assemble(peft);
            ema.Update();
            ema.CopyInto();
            foreach (var t in ema.Capture().Values) t.Dispose();
            using var first = SelfRefinedRetrieval.TasksOf(labels, [0, 0, 1, 1]);
            using var result = SelfRefinedRetrieval.Predict(first, features, prototypes, [0, 0, 1, 1]);
            using var firstAdapter = features.select(1, 0);
            using var means = SelfRefinedRetrieval.Prototypes(firstAdapter, labels, 4);
        }
        Cycle();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 20; i++) Cycle();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}

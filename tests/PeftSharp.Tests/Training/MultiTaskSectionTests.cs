using PeftSharp.Adapters;
using PeftSharp.Data;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

public sealed class MultiTaskSectionTests(ITestOutputHelper output)
{
    /// <summary>Notebook 10's pipeline for one seed (it was notebook 04's multi-task section): a base MLP on the pooled tasks, five frozen source LoRAs, then
    /// ScaLearn variants, AdapterFusion and a fresh LoRA on task 5. Returns each composition's task-5 accuracy and a
    /// checksum of every trained tensor, so two runs can be compared bit for bit.</summary>
    static Dictionary<string, double> Section()
    {
        var train = MultiTaskSet.FromDataFrame(Datasets.MultiTask(Split.Train));
        var test = MultiTaskSet.FromDataFrame(Datasets.MultiTask(Split.Test));
        List<Batch<MultiTaskTensors>> TaskBatches(long task, ulong seed) =>
            train.Batches(64, seed).Select(b => b.Rows.Where(r => train.Task(r) == task).ToList())
                 .Where(rows => rows.Count > 0).Select(rows => new Batch<MultiTaskTensors>(train, rows)).ToList();
        double Accuracy(Mlp m, long task)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var t = new Batch<MultiTaskTensors>(test, Enumerable.Range(0, test.Count).Where(r => test.Task(r) == task).ToList()).ToTensors();
            return m.call(t.Inputs).argmax(1).eq(t.Labels).to(ScalarType.Float32).mean().item<float>();
        }
        void Fit(Mlp m, long? task, int epochs, double lr) =>
            new Trainer().Fit(m, epoch => task is long k ? TaskBatches(k, 100 + (ulong)epoch) : train.Batches(64, 100 + (ulong)epoch).ToList(),
                b => { var t = b.ToTensors(); return nn.functional.mse_loss(m.call(t.Inputs), t.Targets); },
                new TrainerOptions { Epochs = epochs, LearningRate = lr });
        double Checksum(nn.Module m) => m.parameters().Sum(p => { using var s = p.detach().to(ScalarType.Float64).abs().sum(); return s.item<double>(); });

        var results = new Dictionary<string, double>();
        manual_seed(2);
        var mlp = new Mlp(16, 64, 4);
        Fit(mlp, null, 30, 3e-3);
        results["base checksum"] = Checksum(mlp);
        var peft = PeftModel.Create(mlp, new LoraConfig { TargetModules = ["lin0"], R = 2, LoraAlpha = 4 }, "task0");
        for (int task = 1; task < 5; task++) peft.AddAdapter($"task{task}", new LoraConfig { TargetModules = ["lin0"], R = 2, LoraAlpha = 4 });
        for (int task = 0; task < 5; task++)
        {
            peft.SetActiveAdapters($"task{task}");
            Fit(mlp, task, 60, 1e-2);
        }
        results["sources checksum"] = Checksum(mlp);
        string[] sources = ["task0", "task1", "task2", "task3", "task4"];
        void Compose(string name, AdapterConfig config, double lr)
        {
            peft.AddAdapter(name, config);
            peft.SetActiveAdapters(name);
            Fit(mlp, 5, 60, lr);
            results[name] = Accuracy(mlp, 5);
            results[name + " checksum"] = Checksum(mlp);
        }
        Compose("scalearn-uniform", new ScaLearnConfig { TargetModules = ["lin0"], SourceAdapters = sources, Kind = ScaLearnKind.Scalar }, 3e-2);
        Compose("scalearn", new ScaLearnConfig { TargetModules = ["lin0"], SourceAdapters = sources, Kind = ScaLearnKind.Vector }, 3e-2);
        Compose("scalearn++", new ScaLearnConfig { TargetModules = ["lin0"], SourceAdapters = sources, Kind = ScaLearnKind.SharedVector }, 3e-2);
        Compose("adapter-fusion", new AdapterFusionConfig { TargetModules = ["lin0"], SourceAdapters = sources }, 1e-2);
        Compose("fresh LoRA", new LoraConfig { TargetModules = ["lin0"], R = 2, LoraAlpha = 4 }, 1e-2);
        mlp.Dispose();
        return results;
    }

    /// <summary>It failed before the library set MKL_CBWR: the source LoRAs differed in the last bits and AdapterFusion
    /// ended at 80% in one run and 68% in the next (see <see cref="Native.TorchSharpNative.PreferReproducibleMath"/>).</summary>
    [Fact]
    public void The_multi_task_pipeline_of_notebook_10_gives_the_same_numbers_twice_in_one_process()
    {
        Assert.NotNull(Environment.GetEnvironmentVariable(Native.TorchSharpNative.ReproducibilityVariable));
        var first = Section();
        var second = Section();
        foreach (var (key, value) in first) output.WriteLine($"{key,-28} {value:R}  {second[key]:R}");
        foreach (var (key, value) in first) Assert.True(value == second[key], $"{key}: {value:R} then {second[key]:R}");
    }
}

using System.Diagnostics;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Lab.Commands;

/// <summary>
/// <c>demo lora</c>: a base MLP is first trained on task A (imitating a fixed random "teacher" network); task B is the
/// same teacher with a low-rank change to its first layer. A rank-4 LoRA on the frozen base then learns task B. The
/// demo reports the task-B loss before and after, the trainable share, the time, and merged-vs-unmerged agreement.
/// </summary>
static class DemoCommand
{
    const int Inputs = 16, Hidden = 64, Outputs = 8;

    public static int Run(Arguments arguments)
    {
        int steps = arguments.Int("steps", 400);
        manual_seed(0);
        var clock = Stopwatch.StartNew();

        // Data: x ~ N(0, 1); targets from teacher A (base task) and teacher B (A with a rank-2 change in lin0).
        var teacherA = new Mlp(Inputs, 32, Outputs);
        var teacherB = new Mlp(Inputs, 32, Outputs);
        using (no_grad())
        {
            teacherB.load_state_dict(teacherA.state_dict());
            var lin0 = teacherB.named_parameters().Single(p => p.name == "lin0.weight").parameter;
            lin0.add_(randn(32, 2).matmul(randn(2, Inputs)) * 0.3);
        }
        var trainX = randn(2048, Inputs);
        var testX = randn(512, Inputs);
        Tensor Targets(Mlp teacher, Tensor x) { using var _ = no_grad(); return teacher.call(x); }
        var (trainA, trainB, testB) = (Targets(teacherA, trainX), Targets(teacherB, trainX), Targets(teacherB, testX));

        Console.WriteLine("PeftSharp demo: LoRA adapts a frozen MLP to a shifted task");
        Console.WriteLine($"  task A: imitate a random teacher; task B: the teacher with a rank-2 change to its first layer ({trainX.shape[0]} train / {testX.shape[0]} test points)");

        var model = new Mlp(Inputs, Hidden, Outputs);
        var batches = Batches(trainX, trainA);
        new Trainer().Fit(model, e => batches, b => functional.mse_loss(model.call(b.X), b.Y),
                          new TrainerOptions { Epochs = 40, LearningRate = 3e-3 }, name: "base on task A");
        double baseOnA = TestLoss(model, testX, Targets(teacherA, testX));
        double before = TestLoss(model, testX, testB);
        Console.WriteLine($"  base model trained on task A: test loss on A {baseOnA:0.0000}, on B {before:0.0000}");

        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8 });
        var report = peft.ParameterReport();
        Console.WriteLine($"  LoRA r=4 on lin0, lin1: {report}");

        var trainer = new Trainer();
        var progress = new ConsoleProgress("  training");
        trainer.Progress += progress.Report;
        var batchesB = Batches(trainX, trainB);
        var log = trainer.Fit(model, epoch => batchesB, b => functional.mse_loss(model.call(b.X), b.Y),
                              new TrainerOptions { Epochs = int.MaxValue / batchesB.Count, MaxSteps = steps, LearningRate = 1e-2, Schedule = LearningRateSchedule.Cosine },
                              name: "LoRA on task B");
        double after = TestLoss(model, testX, testB);

        using var unmerged = Predict(model, testX);
        peft.Merge();
        using var merged = Predict(model, testX);
        double agreement = (merged - unmerged).abs().max().item<float>();
        peft.Unmerge();

        Console.WriteLine($"  task-B test loss: before {before:0.0000} -> after {after:0.0000} ({100 * (1 - after / before):0.#}% lower)");
        Console.WriteLine($"  trainable: {report.TrainableParameters:N0} of {report.AllParameters:N0} parameters ({report.TrainablePercent:0.00}%), {report.TrainableBytes / 1024.0:0.0} KiB");
        Console.WriteLine($"  LoRA training: {log.Steps.Count} steps in {log.Duration.TotalSeconds:0.00} s; whole demo {clock.Elapsed.TotalSeconds:0.00} s");
        Console.WriteLine($"  merged vs unmerged output: max |difference| = {agreement:G3}");
        return after < before ? 0 : 1;
    }

    sealed record Batch(Tensor X, Tensor Y);

    static List<Batch> Batches(Tensor x, Tensor y, int size = 128) =>
        Enumerable.Range(0, (int)(x.shape[0] / size)).Select(i => new Batch(x[(i * size)..((i + 1) * size)], y[(i * size)..((i + 1) * size)])).ToList();

    static Tensor Predict(Module<Tensor, Tensor> model, Tensor x)
    {
        model.eval();
        using var _ = no_grad();
        return model.call(x);
    }

    static double TestLoss(Module<Tensor, Tensor> model, Tensor x, Tensor y)
    {
        using var prediction = Predict(model, x);
        return functional.mse_loss(prediction, y).item<float>();
    }
}

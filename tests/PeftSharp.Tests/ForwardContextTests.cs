using PeftSharp.Adapters;
using PeftSharp.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>Per-row task ids and adapter names travel with a forward pass inside <see cref="PeftModel.Use"/>, routed
/// adapters report into the context, and nothing is left behind once the scope ends.</summary>
public sealed class ForwardContextTests
{
    static PeftModel TwoTaskAdapters()
    {
        manual_seed(3);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new TaskOffsetConfig { TargetModules = ["lin1"], Offset = 1 }, "a");
        peft.AddAdapter("b", new TaskOffsetConfig { TargetModules = ["lin1"], Offset = 100 });
        return peft;
    }

    [Fact]
    public void Task_ids_reach_the_adapters_of_every_row_and_only_inside_the_scope()
    {
        var peft = TwoTaskAdapters();
        manual_seed(1);
        var x = randn(4, 16);
        using var plain = peft.Forward(x).detach();
        using var withTasks = peft.Forward(x, new ForwardContext { TaskIds = [0, 1, 2, 3] }).detach();
        // lin1 adds offset·task to each row; the head (lin2... of the MLP) is linear, so the change is row-wise.
        Tensors.AssertEqual(plain[0], withTasks[0], "row 0 (task 0)");
        Tensors.AssertDifferent(plain[1], withTasks[1], "row 1 (task 1)");
        Assert.All(peft.Layers, l => Assert.Null(l.Context));
        using var again = peft.Forward(x).detach();
        Tensors.AssertEqual(plain, again, "after the scope");
    }

    [Fact]
    public void In_a_mixed_batch_each_adapter_sees_the_task_ids_of_its_own_rows()
    {
        var peft = TwoTaskAdapters();
        var seen = new List<(string Adapter, int[] Tasks)>();
        TaskOffsetAdapter.Seen = seen;
        try
        {
            manual_seed(1);
            peft.Forward(randn(4, 16), new ForwardContext { TaskIds = [3, 4, 5, 6], AdapterNames = ["a", "b", "a", AdapterLayer.BaseOnly] }).Dispose();
        }
        finally
        {
            TaskOffsetAdapter.Seen = null;
        }
        Assert.Contains(seen, s => s.Adapter == "offset 1" && s.Tasks.SequenceEqual([3, 5]));
        Assert.Contains(seen, s => s.Adapter == "offset 100" && s.Tasks.SequenceEqual([4]));
    }

    [Fact]
    public void Scopes_nest_and_restore_what_was_in_force()
    {
        var peft = TwoTaskAdapters();
        var outer = new ForwardContext { TaskIds = [1] };
        using (peft.Use(outer))
        {
            using (peft.Use(new ForwardContext { TaskIds = [2] }))
                Assert.All(peft.Layers, l => Assert.Equal([2], l.RowTaskIds!));
            Assert.All(peft.Layers, l => Assert.Same(outer, l.Context));
        }
        Assert.All(peft.Layers, l => Assert.Null(l.Context));
    }

    [Fact]
    public void Task_ids_that_do_not_fit_the_batch_are_refused_naming_the_layer()
    {
        var peft = TwoTaskAdapters();
        var error = Assert.Throws<ArgumentException>(() => peft.Forward(randn(4, 16), new ForwardContext { TaskIds = [0, 1] }));
        Assert.Contains("'lin1'", error.Message);
        Assert.Contains("4 rows but the forward context has 2 task ids", error.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => peft.Use(new ForwardContext { TaskIds = [0, -1] }));
        Assert.All(peft.Layers, l => Assert.Null(l.Context));
    }

    [Fact]
    public void A_routed_adapter_reports_its_routing_into_the_context()
    {
        var row = MethodMatrix.Get("block-adapter-fusion");
        var peft = row.Attach(row.NewModel());
        var context = new ForwardContext();
        peft.Forward(row.NewInput(), context).Dispose();
        var routing = context.RoutingWeights();
        var layer = Assert.Single(routing.Layers);
        Assert.EndsWith("fc2", layer.Layer);
        Assert.Equal(["src0", "src1"], layer.Experts);
        Assert.All(layer.Weights, w => Assert.Equal(1.0, w.Sum(), 5));
        // A new context starts empty: nothing from the earlier call.
        Assert.Throws<InvalidOperationException>(() => new ForwardContext().RoutingWeights());
    }
}

/// <summary>A test method that reads the task ids: y = W x + offset·task (per row).</summary>
public sealed record TaskOffsetConfig : AdapterConfig
{
    public double Offset { get; init; } = 1;
    public override string MethodName => "task-offset";
    public override string PeftType => "TASK_OFFSET";
    public override string SupportedLayerTypes => "Linear";
    public override bool CanHold(Module module) => module is Linear;
    public override AdapterModule CreateAdapter(AdapterContext context) => new TaskOffsetAdapter(Offset);
}

public sealed class TaskOffsetAdapter(double offset) : AdapterModule(nameof(TaskOffsetAdapter))
{
    [ThreadStatic] public static List<(string Adapter, int[] Tasks)>? Seen;

    public override string MethodName => "task-offset";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        if (Layer?.RowTaskIds is not { } tasks) return result;
        Seen?.Add(($"offset {offset}", tasks.ToArray()));
        using var perRow = tensor(tasks.Select(t => (float)(t * offset)).ToArray()).unsqueeze(1);   // (rows, 1)
        return result.add_(perRow);
    }
}

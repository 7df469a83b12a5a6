using PeftSharp.Adapters;
using PeftSharp.Methods.Routing;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>MTLoRA: the shared branch for every row, plus the branch of the row's own task.</summary>
public sealed class MtLoraTests
{
    static (Mlp Model, PeftModel Peft, MtLoraAdapter Adapter) Adapted()
    {
        manual_seed(4);
        var model = new Mlp();
        model.eval();
        var peft = PeftModel.Create(model, new MtLoraConfig { TargetModules = ["lin0"], R = 3, TaskR = 2, NTasks = 3, SharedScale = 0.5, TaskScale = 2 });
        Tensors.PerturbAdapters(peft, "default", 0.3);
        return (model, peft, (MtLoraAdapter)peft.Layers.Single()["default"]);
    }

    [Fact]
    public void A_row_gets_the_shared_branch_plus_its_tasks_branch_and_without_task_ids_only_the_shared_one()
    {
        var (model, peft, adapter) = Adapted();
        var tensors = adapter.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter.detach());
        manual_seed(2);
        var x = randn(4, 16);
        int[] tasks = [2, 0, 2, 1];
        using var output = peft.Forward(x, new ForwardContext { TaskIds = tasks });
        using var sharedOnly = model.call(x);

        // The MLP after lin0: relu → lin1 → relu → head, applied to lin0's adapted output computed by hand.
        var lin0 = peft.Layers.Single().BaseLayer;
        using var baseOut = lin0.call(x);
        using var shared = x.matmul(tensors["mtlora_shared_A"].t()).matmul(tensors["mtlora_shared_B"].t()) * 0.5;
        var perRow = Enumerable.Range(0, 4).Select(i =>
            x[i].matmul(tensors["mtlora_tasks_A"][tasks[i]].t()).matmul(tensors["mtlora_tasks_B"][tasks[i]].t()) * 2).ToList();
        using var task = stack(perRow);
        var rest = model.named_children().Where(c => c.name is "lin1" or "head").ToDictionary(c => c.name, c => (nn.Module<Tensor, Tensor>)c.module);
        Tensor Tail(Tensor h) => rest["head"].call(nn.functional.relu(rest["lin1"].call(nn.functional.relu(h))));
        Tensors.AssertClose(Tail(baseOut + shared + task), output, 1e-5, "shared + task branch");
        Tensors.AssertClose(Tail(baseOut + shared), sharedOnly, 1e-5, "shared branch alone");
        Tensors.AssertDifferent(output, sharedOnly, "with and without task ids");
    }

    [Fact]
    public void A_task_id_without_a_branch_is_refused_naming_the_layer()
    {
        var (_, peft, _) = Adapted();
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => peft.Forward(randn(2, 16), new ForwardContext { TaskIds = [1, 3] }));
        Assert.Contains("'lin0'", error.Message);
        Assert.Contains("3 task branches", error.Message);
    }

    [Fact]
    public void The_multi_task_rows_of_the_method_matrix_see_several_tasks()
    {
        foreach (var name in new[] { "tasks-mlp-mtlora", "tasks-block-mtlora", "tasks-mlp-poly" })
        {
            var row = MethodMatrix.Get(name);
            var model = (TaskRouted)row.NewModel();
            Assert.True(model.TaskIds(row.NewInput()).Distinct().Count() > 1, $"{name}: every row has the same task");
        }
    }
}

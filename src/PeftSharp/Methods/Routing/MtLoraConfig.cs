using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// MTLoRA (Agiza et al. 2024, "MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task Learning", §3.2): a
/// task-agnostic low-rank branch shared by every task (TA-LoRA) plus one task-specific branch per task (TS-LoRA). A row
/// with task id t gets y_t = W x + s_sh·B_sh A_sh x + s_t·B_t A_t x: the task output of the authors' <c>MTLoRALinear</c>
/// in its <c>shared_mode="matrixv2"</c> (scale-lab/MTLoRA, models/lora.py), which adds the shared and the task's update
/// to the pretrained output. A row without a task id (no <see cref="ForwardContext.TaskIds"/>) gets the task-agnostic
/// output y = W x + s_sh·B_sh A_sh x, the module's first (shared) output. A Kaiming-uniform (a = √5), B = 0, so the
/// adapter starts as the identity. This library's layout (<c>peft_type</c> "MTLORA"): per module
/// <c>mtlora_shared_A</c> (r, in), <c>mtlora_shared_B</c> (out, r), <c>mtlora_tasks_A</c> (T, r_t, in),
/// <c>mtlora_tasks_B</c> (T, out, r_t).
/// </summary>
public sealed record MtLoraConfig : AdapterConfig
{
    /// <summary>The rank of the shared (task-agnostic) branch.</summary>
    [JsonPropertyName("r"), Option("rank", "r: the rank of the shared branch", Min = 1, Max = 65536)]
    public int R { get; init; } = 8;

    /// <summary>The rank of each task-specific branch; null: the shared rank.</summary>
    [JsonPropertyName("task_r"), Option("task-rank", "task_r: the rank of each task branch (default r)", Min = 1, Max = 65536)]
    public int? TaskR { get; init; }

    /// <summary>How many tasks (task ids 0 .. n_tasks-1), one branch each.</summary>
    [JsonPropertyName("n_tasks"), Option("tasks", "n_tasks: one task-specific branch per task", Min = 1, Max = 100000)]
    public int NTasks { get; init; } = 2;

    /// <summary>s_sh, the shared branch's scale (the authors' <c>lora_shared_scale</c>).</summary>
    [JsonPropertyName("lora_shared_scale"), Option("shared-scale", "lora_shared_scale: s_sh, the shared branch's scale", Min = -1e6, Max = 1e6)]
    public double SharedScale { get; init; } = 1;

    /// <summary>s_t, every task branch's scale (the authors' <c>lora_task_scale</c>).</summary>
    [JsonPropertyName("lora_task_scale"), Option("task-scale", "lora_task_scale: s_t, each task branch's scale", Min = -1e6, Max = 1e6)]
    public double TaskScale { get; init; } = 1;

    public override string MethodName => "mtlora";

    public override string PeftType => "MTLORA";

    public override string SupportedLayerTypes => "Linear";

    public override bool CanHold(Module module) => module is Linear;

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        new MtLoraAdapter(R, TaskR ?? R, NTasks, SharedScale, TaskScale, AdapterModule.BaseWeight(context.BaseLayer), context.Initialize);

    public override IReadOnlyList<string> FileTensorMarkers => [".mtlora_"];

    public override int? InspectModule(string path, IReadOnlyList<SafeTensorInfo> tensors, List<string> problems)
    {
        string[] names = ["mtlora_shared_A", "mtlora_shared_B", "mtlora_tasks_A", "mtlora_tasks_B"];
        var found = names.Select(n => tensors.FirstOrDefault(t => t.Name.EndsWith("." + n))).ToArray();
        if (found.Any(t => t is null))
        {
            problems.Add($"'{path}' lacks {string.Join(", ", names.Where((_, i) => found[i] is null))}.");
            return null;
        }
        int taskR = TaskR ?? R;
        if (found[0]!.Shape[0] != R || found[1]!.Shape[1] != R)
            problems.Add($"'{path}': the shared branch is [{string.Join(", ", found[0]!.Shape)}] / [{string.Join(", ", found[1]!.Shape)}] but r = {R}.");
        if (found[2]!.Shape.Length != 3 || found[2]!.Shape[0] != NTasks || found[2]!.Shape[1] != taskR || found[3]!.Shape.Length != 3 || found[3]!.Shape[0] != NTasks || found[3]!.Shape[2] != taskR)
            problems.Add($"'{path}': the task branches are [{string.Join(", ", found[2]!.Shape)}] / [{string.Join(", ", found[3]!.Shape)}] but n_tasks = {NTasks}, task_r = {taskR}.");
        return R;
    }
}

/// <summary>MTLoRA at one Linear layer: the shared branch and the T task branches (see <see cref="MtLoraConfig"/>).</summary>
public sealed class MtLoraAdapter : AdapterModule
{
    readonly Parameter mtlora_shared_A, mtlora_shared_B, mtlora_tasks_A, mtlora_tasks_B;
    readonly double _sharedScale, _taskScale;

    public MtLoraAdapter(int r, int taskR, int nTasks, double sharedScale, double taskScale, Tensor baseWeight, bool initialize) : base(nameof(MtLoraAdapter))
    {
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        R = r;
        NTasks = nTasks;
        (_sharedScale, _taskScale) = (sharedScale, taskScale);
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        mtlora_shared_A = new Parameter(empty(r, inFeatures, dtype: dtype, device: device));
        mtlora_shared_B = new Parameter(zeros(outFeatures, r, dtype: dtype, device: device));
        mtlora_tasks_A = new Parameter(empty(nTasks, taskR, inFeatures, dtype: dtype, device: device));
        mtlora_tasks_B = new Parameter(zeros(nTasks, outFeatures, taskR, dtype: dtype, device: device));
        register_parameter("mtlora_shared_A", mtlora_shared_A);
        register_parameter("mtlora_shared_B", mtlora_shared_B);
        register_parameter("mtlora_tasks_A", mtlora_tasks_A);
        register_parameter("mtlora_tasks_B", mtlora_tasks_B);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        // Kaiming-uniform with a = √5 on a (r, in) matrix: U(-1/√in, 1/√in), for the shared A and every task's A.
        double bound = 1 / Math.Sqrt(inFeatures);
        mtlora_shared_A.uniform_(-bound, bound);
        mtlora_tasks_A.uniform_(-bound, bound);
    }

    public override string MethodName => "mtlora";

    public int R { get; }
    public int NTasks { get; }
    public override int? Rank => R;

    public override string CannotMergeReason => "MTLoRA adds a different task branch to each row (by task id), so there is no single weight to fold in.";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var shared = x.matmul(mtlora_shared_A.t()).matmul(mtlora_shared_B.t()).mul(_sharedScale);   // (..., out)
        result = result.add_(shared);
        if (Layer?.RowTaskIds is not { } ids) return result;
        if (ids.FirstOrDefault(t => t >= NTasks) is var bad && bad >= NTasks)
            throw new ArgumentOutOfRangeException("TaskIds", bad, $"Layer '{Layer.Path}': MTLoRA has {NTasks} task branches (n_tasks); found task id {bad}.");
        long batch = x.shape[0];
        using var index = tensor(ids.Select(t => (long)t).ToArray(), dtype: ScalarType.Int64, device: x.device);
        var a = mtlora_tasks_A.index_select(0, index);                                 // (B, r_t, in)
        var b = mtlora_tasks_B.index_select(0, index);                                 // (B, out, r_t)
        var rows = x.reshape(batch, -1, x.shape[^1]);                                  // (B, N, in)
        var task = rows.bmm(a.transpose(1, 2)).bmm(b.transpose(1, 2)).mul(_taskScale); // (B, N, out)
        return result.add_(task.reshape(result.shape));
    }
}

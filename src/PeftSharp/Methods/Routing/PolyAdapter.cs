using System.Globalization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// PEFT's <c>PolyRouter</c> (peft/tuners/poly/router.py): the task × skill logits Z = <c>module_logits</c>
/// (n_tasks, n_splits·n_skills), uniform in ±1e-3 at init. For task ids t (B,) it gives mixing weights (B, n_splits, K):
/// z = sigmoid(Z_t) at eval, z ~ RelaxedBernoulli(temperature 1, logits Z_t) in training (Ponti et al. 2023, §3:
/// the Gumbel-sigmoid relaxation of a binary task-skill allocation), then w = z / (Σ_k z_k + 1e-12) per split.
/// </summary>
public sealed class PolyRouter : Module
{
    /// <summary>PEFT's <c>EPS</c> in the normalisation w = z / (Σ z + EPS).</summary>
    public const double Eps = 1e-12;

    readonly Parameter module_logits;

    public PolyRouter(int nTasks, int nSplits, int nSkills, ScalarType dtype, Device device) : base(nameof(PolyRouter))
    {
        NTasks = nTasks;
        NSplits = nSplits;
        NSkills = nSkills;
        module_logits = new Parameter(empty(nTasks, (long)nSplits * nSkills, dtype: dtype, device: device));
        register_parameter("module_logits", module_logits);
        // In-place ops return new handles: a scope frees them.
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        module_logits.uniform_(-1e-3, 1e-3);
    }

    public int NTasks { get; }
    public int NSplits { get; }
    public int NSkills { get; }

    /// <summary>Z, (n_tasks, n_splits·n_skills).</summary>
    public Parameter ModuleLogits => module_logits;

    /// <summary>Mixing weights (B, n_splits, K) for <paramref name="taskIds"/> (B,), int64: relaxed Bernoulli in training,
    /// sigmoid at eval, normalised over the skills of each split.</summary>
    public Tensor MixingWeights(Tensor taskIds)
    {
        using var scope = NewDisposeScope();
        var logits = module_logits.index_select(0, taskIds).view(-1, NSplits, NSkills);   // (B, q, K)
        var z = training ? RelaxedBernoulliSample(logits) : logits.sigmoid();
        return z.div(z.sum(-1, keepdim: true).add(Eps)).MoveToOuterDisposeScope();
    }

    /// <summary>The eval routing of every task, (n_tasks, n_splits, K): w = sigmoid(Z) / (Σ_k sigmoid(Z) + 1e-12).</summary>
    public Tensor EvalRouting()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var z = module_logits.detach().view(-1, NSplits, NSkills).sigmoid();
        return z.div(z.sum(-1, keepdim: true).add(Eps)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One reparameterised sample of PyTorch's <c>RelaxedBernoulli(temperature, logits).rsample()</c>, with its clamps:
    /// p = clamp(sigmoid(logits), ε, 1-ε), u = clamp(U(0,1), ε, 1-ε) (one <c>torch.rand</c> of the logits' shape),
    /// z = clamp(sigmoid((log u - log(1-u) + log p - log(1-p)) / temperature), tiny, 1-ε), ε the dtype's machine epsilon.
    /// </summary>
    public static Tensor RelaxedBernoulliSample(Tensor logits, double temperature = 1.0)
    {
        using var scope = NewDisposeScope();
        var (eps, tiny) = logits.dtype == ScalarType.Float64 ? (2.220446049250313e-16, 2.2250738585072014e-308)
            : logits.dtype == ScalarType.Float32 ? (1.1920928955078125e-07, 1.1754943508222875e-38)
            : throw new ArgumentException($"Poly's routing logits are {logits.dtype}; the relaxed Bernoulli sample is defined here for float32 and float64.", nameof(logits));
        var p = logits.sigmoid().clamp(eps, 1 - eps);
        var u = rand(logits.shape, dtype: logits.dtype, device: logits.device).clamp(eps, 1 - eps);
        var x = u.log().sub(u.neg().log1p()).add(p.log()).sub(p.neg().log1p()).div(temperature);
        return x.sigmoid().clamp(tiny, 1 - eps).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// One Poly / MHR adapter at one Linear layer (PEFT's <c>poly.Linear</c>): the skill inventory <c>poly_lora_A</c>
/// (n_splits, K, in / n_splits, r) and <c>poly_lora_B</c> (n_splits, K, r, out / n_splits), and the router
/// <c>poly_router</c>. Forward for rows with task ids t, x (B, N, in):
/// A_b = reshape(Σ_k w_bqk A_qk) (B, in, r), B_b = reshape(Σ_k w_bqk B_qk) (B, r, out), y = W x + (x A_b) B_b / r.
/// The routing is reported as a task × skill matrix per split (eval weights of every task).
/// </summary>
public sealed class PolyAdapter : AdapterModule, IReportsRouting
{
    readonly Parameter poly_lora_A, poly_lora_B;
    readonly PolyRouter poly_router;
    readonly long _in, _out;

    public PolyAdapter(PolyConfig config, long inFeatures, long outFeatures, ScalarType dtype, Device device, bool initialize) : base(nameof(PolyAdapter))
    {
        R = config.R;
        NTasks = config.NTasks;
        NSkills = config.NSkills;
        NSplits = config.NSplits;
        _in = inFeatures;
        _out = outFeatures;
        poly_lora_A = new Parameter(empty(NSplits, NSkills, inFeatures / NSplits, R, dtype: dtype, device: device));
        poly_lora_B = new Parameter(empty(NSplits, NSkills, R, outFeatures / NSplits, dtype: dtype, device: device));
        poly_router = new PolyRouter(NTasks, NSplits, NSkills, dtype, device);
        register_parameter("poly_lora_A", poly_lora_A);
        register_parameter("poly_lora_B", poly_lora_B);
        register_module("poly_router", poly_router);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        // PEFT: each A_qk (r, d) Kaiming-uniform with a = √5 (bound 1/√d), stored transposed; B zero (or the same rule).
        poly_lora_A.uniform_(-1 / Math.Sqrt(inFeatures / NSplits), 1 / Math.Sqrt(inFeatures / NSplits));
        if (!initialize || config.InitWeights) poly_lora_B.zero_();
        else poly_lora_B.uniform_(-1 / Math.Sqrt(R), 1 / Math.Sqrt(R));
    }

    public override string MethodName => NSplits > 1 ? "mhr" : "poly";

    public int R { get; }
    public int NTasks { get; }
    public int NSkills { get; }
    public int NSplits { get; }

    public override int? Rank => R;

    /// <summary>The skill inventory's A, (n_splits, K, in / n_splits, r).</summary>
    public Parameter InventoryA => poly_lora_A;

    /// <summary>The skill inventory's B, (n_splits, K, r, out / n_splits).</summary>
    public Parameter InventoryB => poly_lora_B;

    public PolyRouter Router => poly_router;

    /// <summary>When true only the routing trains (MHR-z, see <see cref="MultiHeadRouting.RoutingOnly"/>).</summary>
    public bool InventoryFrozen { get; internal set; }

    public override bool Trains(string name) => !InventoryFrozen || name.StartsWith("poly_router.", StringComparison.Ordinal);

    public override string CannotMergeReason =>
        $"{MethodName} mixes its skills per task id, so its weight change differs from row to row; there is no single weight to fold in.";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        long batch = x.shape[0];
        var ids = TaskIds(batch);
        using var taskIds = tensor(ids, dtype: ScalarType.Int64, device: poly_lora_A.device);
        var weights = poly_router.MixingWeights(taskIds);                                                      // (B, q, K)
        var a = einsum("bqs,qsdr->bqdr", weights, poly_lora_A).reshape(batch, _in, R);                          // (B, in, r)
        var b = einsum("bqs,qsrd->bqrd", weights, poly_lora_B).transpose(1, 2).reshape(batch, R, _out);         // (B, r, out)
        var rows = x.reshape(batch, -1, _in).to(a.dtype);                                                       // (B, N, in)
        var delta = rows.bmm(a).bmm(b).div(R);                                                                  // (B, N, out)
        if (Context is { } context)
            foreach (var routing in RoutingLayers) context.ReportRouting(routing);
        return result.add_(delta.reshape(result.shape).to(result.dtype));
    }

    long[] TaskIds(long batch)
    {
        if (Layer?.RowTaskIds is { } ids)
        {
            if (ids.FirstOrDefault(t => t >= NTasks) is var bad && bad >= NTasks)
                throw new ArgumentOutOfRangeException("TaskIds", bad, $"Layer '{Layer.Path}': only {NTasks} tasks available (n_tasks); found task id {bad}.");
            return ids.Select(t => (long)t).ToArray();
        }
        if (NTasks == 1) return new long[batch];
        throw new InvalidOperationException(
            $"Layer '{Layer?.Path}': this {MethodName} adapter routes by task (n_tasks = {NTasks}) and needs a task id per row: " +
            "run the model inside peft.Use(new ForwardContext { TaskIds = ... }) or call peft.Forward(x, new ForwardContext { TaskIds = ... }).");
    }

    /// <summary>The routing as the views draw it: per split, a task × skill matrix of eval weights (every task).</summary>
    public IReadOnlyList<RoutingLayer> RoutingLayers
    {
        get
        {
            double[] values;
            using (NewDisposeScope()) values = poly_router.EvalRouting().to(ScalarType.Float64).cpu().data<double>().ToArray();   // (T, q, K)
            var tasks = Enumerable.Range(0, NTasks).Select(t => "task " + t.ToString(CultureInfo.InvariantCulture)).ToList();
            var skills = Enumerable.Range(0, NSkills).Select(k => "skill " + k.ToString(CultureInfo.InvariantCulture)).ToList();
            string path = Layer?.Path ?? MethodName;
            return Enumerable.Range(0, NSplits).Select(q => new RoutingLayer(
                NSplits == 1 ? path : $"{path} (head {q})", tasks, skills,
                Enumerable.Range(0, NTasks).Select(t => (IReadOnlyList<double>)values.AsSpan((t * NSplits + q) * NSkills, NSkills).ToArray()).ToList())).ToList();
        }
    }

    public RoutingLayer? LastRouting => RoutingLayers[0];

    public string RowKind => "task";
}

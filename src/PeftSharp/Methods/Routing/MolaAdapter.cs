using System.Globalization;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Routing;

/// <summary>
/// MoLA at one Linear layer (see <see cref="MolaConfig"/>): E LoRA experts <c>mola_A</c> (E, r, in), <c>mola_B</c>
/// (E, out, r) and a router <c>mola_router</c> (E, in, no bias). For tokens x (N, in): g = softmax(x W_rᵀ) (N, E); the
/// top-k gates renormalised, w = g·m / Σ g·m (m the top-k mask); y = W x + s Σ_i w_i B_i A_i x. The experts are
/// computed densely (every expert on every token, then weighted), which is exact and fast at this library's sizes.
/// Keeps the last forward's gates for the load-balancing loss and the routing views.
/// </summary>
public sealed class MolaAdapter : AdapterModule, IReportsRouting
{
    readonly Linear mola_router;
    readonly Parameter mola_A, mola_B;
    readonly double _scaling;
    Tensor? _lastGates;       // (N, E) softmax gates of the last forward, with their graph (for the loss)
    Tensor? _lastMask;        // (N, E) 1 where an expert is among the token's top-k
    Tensor? _lastWeights;     // (N, E) renormalised top-k weights, detached (for the views)

    public MolaAdapter(int experts, int topK, int r, double scaling, Tensor baseWeight) : base(nameof(MolaAdapter))
    {
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        var (dtype, device) = (baseWeight.dtype, baseWeight.device);
        Experts = experts;
        TopK = topK;
        R = r;
        _scaling = scaling;
        mola_router = Linear(inFeatures, experts, hasBias: false, device: device, dtype: dtype);
        mola_A = new Parameter(empty(experts, r, inFeatures, dtype: dtype, device: device));
        mola_B = new Parameter(zeros(experts, outFeatures, r, dtype: dtype, device: device));
        register_module("mola_router", mola_router);
        register_parameter("mola_A", mola_A);
        register_parameter("mola_B", mola_B);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        double bound = 1 / Math.Sqrt(inFeatures);   // Kaiming-uniform, a = √5, on each (r, in) A
        mola_A.uniform_(-bound, bound);
    }

    public override string MethodName => "mola";

    /// <summary>E, this layer's experts.</summary>
    public int Experts { get; }

    /// <summary>k, the experts each token uses.</summary>
    public int TopK { get; }

    public int R { get; }

    public override int? Rank => R;

    public override string CannotMergeReason => "MoLA routes each token to its own experts, so there is no single weight to fold in.";

    /// <summary>The router's weight W_r, (E, in).</summary>
    public Parameter RouterWeight => mola_router.weight!;

    /// <summary>
    /// The top-k renormalisation: for gates g (..., E) (a softmax), keeps the k largest per row and divides them by
    /// their sum, w_i = g_i / Σ_{j∈top-k} g_j, zeros elsewhere. Returns the weights and the 0/1 top-k mask.
    /// </summary>
    public static (Tensor Weights, Tensor Mask) TopKRenormalised(Tensor gates, int k)
    {
        using var scope = NewDisposeScope();
        var (_, indices) = gates.topk(k, dim: -1);
        var mask = zeros_like(gates).scatter_(-1, indices, ones(indices.shape, dtype: gates.dtype, device: gates.device));
        var kept = gates.mul(mask);
        var weights = kept.div(kept.sum(-1, keepdim: true));
        return (weights.MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope());
    }

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var tokens = x.reshape(-1, x.shape[^1]);                                       // (N, in)
        var gates = mola_router.call(tokens).softmax(-1);                               // (N, E)
        var (weights, mask) = TopKRenormalised(gates, TopK);                            // (N, E)
        var low = einsum("ni,eri->ner", tokens, mola_A);                                // (N, E, r)
        var expertOut = einsum("ner,eor->neo", low, mola_B);                            // (N, E, out)
        var mixed = weights.unsqueeze(-1).mul(expertOut).sum(1).mul(_scaling);          // (N, out)
        Remember(gates, mask, weights);
        if (Context is { } context && LastRouting is { } routing) context.ReportRouting(routing);
        return result.add_(mixed.reshape(result.shape));
    }

    void Remember(Tensor gates, Tensor mask, Tensor weights)
    {
        _lastGates?.Dispose();
        _lastMask?.Dispose();
        _lastWeights?.Dispose();
        _lastGates = gates.DetachFromDisposeScope();   // keeps its graph: the loss term backpropagates into the router
        _lastMask = mask.detach().clone().DetachFromDisposeScope();
        _lastWeights = weights.detach().clone().DetachFromDisposeScope();
    }

    /// <summary>
    /// This layer's load-balancing loss for its last forward pass (Switch Transformer's auxiliary loss, as Mixtral and
    /// MoLA use it): L = E · Σ_i f_i P_i, with f_i the fraction of tokens whose top-k holds expert i and P_i the mean
    /// gate of expert i over the tokens. It is k when the load is even and grows as it concentrates; it carries
    /// gradients to the router through P.
    /// </summary>
    public Tensor LoadBalancingLoss()
    {
        if (_lastGates is null || _lastMask is null)
            throw new InvalidOperationException($"MoLA at '{Layer?.Path}' has not run a forward pass yet: compute the loss after the model's forward.");
        using var scope = NewDisposeScope();
        var fraction = _lastMask.mean([0]);                                              // (E)
        var meanGate = _lastGates.mean([0]);                                             // (E)
        return fraction.mul(meanGate).sum().mul(Experts).MoveToOuterDisposeScope();
    }

    /// <summary>The last forward's routing: one row per token (the first <see cref="MaxRoutingRows"/>), one column per
    /// expert, the renormalised top-k weights (zeros outside the top-k).</summary>
    public RoutingLayer? LastRouting
    {
        get
        {
            if (_lastWeights is null) return null;
            using var rows = _lastWeights.to(ScalarType.Float64).cpu();
            long n = Math.Min(rows.shape[0], MaxRoutingRows);
            var values = rows.data<double>().ToArray();
            return new RoutingLayer(Layer?.Path ?? "mola",
                Enumerable.Range(0, (int)n).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToList(),
                Enumerable.Range(0, Experts).Select(e => "expert " + e.ToString(CultureInfo.InvariantCulture)).ToList(),
                Enumerable.Range(0, (int)n).Select(i => (IReadOnlyList<double>)values.AsSpan(i * Experts, Experts).ToArray()).ToList());
        }
    }

    /// <summary>How many token rows <see cref="LastRouting"/> reports at most.</summary>
    public const int MaxRoutingRows = 256;

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _lastGates?.Dispose();
            _lastMask?.Dispose();
            _lastWeights?.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>MoLA across the model: the load-balancing loss of every layer, for <c>Trainer.AddLossTerm</c>.</summary>
public static class Mola
{
    /// <summary>
    /// The mean over adapter <paramref name="adapterName"/>'s MoLA layers of their load-balancing losses
    /// (<see cref="MolaAdapter.LoadBalancingLoss"/>) for the last forward pass. Layers have different expert counts, so
    /// each is balanced on its own (Mixtral's loss concatenates layers of equal width instead). Use it as
    /// <c>trainer.AddLossTerm("load balance", () => 0.01 * Mola.LoadBalancingLoss(peft))</c>.
    /// </summary>
    public static Tensor LoadBalancingLoss(PeftModel peft, string adapterName = PeftModel.DefaultAdapterName)
    {
        ArgumentNullException.ThrowIfNull(peft);
        var layers = peft.Layers.Where(l => l.Contains(adapterName)).Select(l => l[adapterName]).OfType<MolaAdapter>().ToList();
        if (layers.Count == 0)
            throw new ArgumentException($"Adapter '{adapterName}' has no MoLA layers (it is {peft.Config(adapterName).MethodName}); the load-balancing loss is MoLA's.", nameof(adapterName));
        using var scope = NewDisposeScope();
        return stack(layers.Select(l => l.LoadBalancingLoss()).ToList()).mean().MoveToOuterDisposeScope();
    }
}

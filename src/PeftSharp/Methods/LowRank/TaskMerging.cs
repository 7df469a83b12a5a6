using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// Hugging Face PEFT's <c>utils/merge_utils.py</c>: ways to combine K "task tensors" (same shape, one per adapter) with
/// weights w (a 1-D tensor of K values) into one tensor. Task arithmetic (Ilharco et al. 2023): Σ wₖ tₖ. TIES (Yadav et
/// al. 2023, "TIES-Merging"): keep each tₖ's top <c>density</c> fraction by magnitude, elect a sign per element, average
/// the weighted values that agree with it. DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each value
/// with probability 1 − density and rescale the survivors by 1 / density, then merge linearly or by TIES.
/// Every function returns a new tensor of the task tensors' shape; the caller's dispose scope owns it.
/// </summary>
public static class TaskMerging
{
    /// <summary>PEFT <c>magnitude_based_pruning</c>: keeps the ⌊density · numel⌋ largest |values|, zeroes the rest.</summary>
    public static Tensor MagnitudeBasedPruning(Tensor tensor, double density)
    {
        var mask = zeros_like(tensor).reshape(-1);
        long k = (long)(density * tensor.numel());
        if (k > 0)
        {
            var (_, indices) = tensor.abs().reshape(-1).topk((int)k, largest: true);
            mask.index_fill_(0, indices, 1);
        }
        return tensor * mask.reshape(tensor.shape);
    }

    /// <summary>PEFT <c>random_pruning</c>: keeps each value with probability <paramref name="density"/> (a Bernoulli
    /// mask drawn from <paramref name="generator"/>, or torch's global generator when null); with
    /// <paramref name="rescale"/> the survivors are divided by density so the expected value is unchanged (DARE).</summary>
    public static Tensor RandomPruning(Tensor tensor, double density, bool rescale, Generator? generator = null)
    {
        var mask = bernoulli(full_like(tensor, density), generator);
        var pruned = tensor * mask;
        return rescale ? pruned / density : pruned;
    }

    /// <summary>PEFT <c>prune</c>: density ≥ 1 keeps everything; "magnitude" or "random" otherwise.</summary>
    public static Tensor Prune(Tensor tensor, double density, string method, bool rescale = false, Generator? generator = null)
    {
        if (density >= 1) return tensor.clone();
        if (density < 0) throw new ArgumentOutOfRangeException(nameof(density), density, "density is the fraction of values kept: a number in [0, 1].");
        return method switch
        {
            "magnitude" => MagnitudeBasedPruning(tensor, density),
            "random" => RandomPruning(tensor, density, rescale, generator),
            _ => throw new ArgumentException($"Unknown pruning method '{method}'; use \"magnitude\" or \"random\".", nameof(method)),
        };
    }

    /// <summary>PEFT <c>calculate_majority_sign_mask</c> on K tensors stacked on dim 0: the elected sign of each element is
    /// the sign of Σₖ tₖ ("total") or of Σₖ sign(tₖ) ("frequency"), + on a tie; true where tₖ has that sign.</summary>
    public static Tensor MajoritySignMask(Tensor stacked, string method = "total")
    {
        var sign = stacked.sign();
        var magnitude = method switch
        {
            "total" => stacked.sum(dim: 0),
            "frequency" => sign.sum(dim: 0),
            _ => throw new ArgumentException($"Unknown majority_sign_method '{method}'; use \"total\" or \"frequency\".", nameof(method)),
        };
        var majority = where(magnitude >= 0, ones_like(magnitude), -ones_like(magnitude));
        return sign == majority;
    }

    /// <summary>PEFT <c>disjoint_merge</c>: the mean, over the tensors whose sign agrees with the elected one, of their
    /// values (Σₖ tₖ·maskₖ / max(Σₖ maskₖ, 1)).</summary>
    public static Tensor DisjointMerge(Tensor stackedWeighted, Tensor majoritySignMask)
    {
        var mixed = (stackedWeighted * majoritySignMask).sum(dim: 0);
        var preserved = majoritySignMask.sum(dim: 0);
        return mixed / clamp(preserved, min: 1.0);
    }

    /// <summary>PEFT <c>task_arithmetic</c>: Σₖ wₖ tₖ.</summary>
    public static Tensor TaskArithmetic(IReadOnlyList<Tensor> tasks, Tensor weights) => Weighted(stack(tasks, 0), weights).sum(dim: 0);

    /// <summary>PEFT <c>magnitude_prune</c>: Σₖ wₖ · magnitude-prune(tₖ, density).</summary>
    public static Tensor MagnitudePrune(IReadOnlyList<Tensor> tasks, Tensor weights, double density) =>
        Weighted(stack(tasks.Select(t => Prune(t, density, "magnitude")).ToList(), 0), weights).sum(dim: 0);

    /// <summary>PEFT <c>ties</c>: magnitude pruning, a sign elected on the pruned (unweighted) tensors, then the disjoint
    /// mean of the weighted ones.</summary>
    public static Tensor Ties(IReadOnlyList<Tensor> tasks, Tensor weights, double density, string majoritySignMethod = "total")
    {
        var stacked = stack(tasks.Select(t => Prune(t, density, "magnitude")).ToList(), 0);
        var mask = MajoritySignMask(stacked, majoritySignMethod);
        return DisjointMerge(Weighted(stacked, weights), mask);
    }

    /// <summary>PEFT <c>dare_linear</c>: Σₖ wₖ · DARE(tₖ), DARE(t) = t ⊙ Bernoulli(density) / density, one mask per tensor
    /// drawn in order from <paramref name="generator"/>.</summary>
    public static Tensor DareLinear(IReadOnlyList<Tensor> tasks, Tensor weights, double density, Generator? generator = null) =>
        Weighted(stack(tasks.Select(t => Prune(t, density, "random", rescale: true, generator)).ToList(), 0), weights).sum(dim: 0);

    /// <summary>PEFT <c>dare_ties</c>: DARE's random drop and rescale, then TIES's sign election and disjoint mean.</summary>
    public static Tensor DareTies(IReadOnlyList<Tensor> tasks, Tensor weights, double density, string majoritySignMethod = "total", Generator? generator = null)
    {
        var stacked = stack(tasks.Select(t => Prune(t, density, "random", rescale: true, generator)).ToList(), 0);
        var mask = MajoritySignMask(stacked, majoritySignMethod);
        return DisjointMerge(Weighted(stacked, weights), mask);
    }

    // PEFT reshape_weight_task_tensors: (K) -> (K, 1, ..., 1) to broadcast over the stacked tensors.
    static Tensor Weighted(Tensor stacked, Tensor weights)
    {
        var shape = new long[stacked.dim()];
        Array.Fill(shape, 1L);
        shape[0] = weights.shape[0];
        return stacked * weights.view(shape);
    }
}

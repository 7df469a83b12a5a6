using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// AdaLoRA on a Linear layer (Zhang et al. 2023, eq. 3), as PEFT's <c>SVDLinear</c>:
/// result += (dropout(x) · (A ⊙ E)ᵀ · Bᵀ) · α / (ranknum + 1e-5), with <c>lora_A</c> [r, in] (Q, right singular
/// vectors), <c>lora_E</c> [r, 1] (Λ, singular values), <c>lora_B</c> [out, r] (P, left singular vectors) and
/// <c>ranknum</c> [1] the rank the layer was created with (a constant, not saved, as in PEFT; PEFT holds it as a frozen
/// parameter, here it is a buffer, so parameter counts have one entry per layer less than PEFT's "all params"). Pruning a triplet sets its
/// entry of E to 0 (<see cref="AdaLoraAllocator"/>); <see cref="Kept"/> then says which triplets the file keeps.
/// </summary>
public sealed class AdaLoraLinearAdapter : WeightDeltaAdapter
{
    readonly Parameter lora_A;
    readonly Parameter lora_E;
    readonly Parameter lora_B;
    readonly Tensor ranknum;
    readonly Dropout? lora_dropout;

    /// <param name="r">The number of triplets this layer holds (init_r, or fewer when loading a pruned file).</param>
    /// <param name="initR">PEFT's <c>ranknum</c>: init_r, which the scale keeps even after pruning or a resize on load.</param>
    /// <param name="loraAlpha">α; the scale is α / (ranknum + 1e-5).</param>
    /// <param name="dropout">lora_dropout on the adapter's input.</param>
    /// <param name="baseWeight">The base layer's weight [out, in]: the adapter's shapes, device and dtype follow it.</param>
    /// <param name="init">PEFT's init (true: E = 0, A and B ~ N(0, 0.02²); false: all standard normal), or null when the
    /// values come from a file next.</param>
    public AdaLoraLinearAdapter(int r, int initR, double loraAlpha, double dropout, Tensor baseWeight, LoraInit? init)
        : base(nameof(AdaLoraLinearAdapter))
    {
        R = r;
        Alpha = loraAlpha;
        long outFeatures = baseWeight.shape[0], inFeatures = baseWeight.shape[1];
        var options = (device: baseWeight.device, dtype: baseWeight.dtype);
        lora_A = new Parameter(randn(r, inFeatures, dtype: options.dtype, device: options.device));
        lora_E = new Parameter(randn(r, 1, dtype: options.dtype, device: options.device));
        lora_B = new Parameter(randn(outFeatures, r, dtype: options.dtype, device: options.device));
        ranknum = full(1, (double)initR, dtype: options.dtype, device: options.device);
        register_parameter("lora_A", lora_A);
        register_parameter("lora_E", lora_E);
        register_parameter("lora_B", lora_B);
        register_buffer("ranknum", ranknum);
        if (dropout > 0)
        {
            lora_dropout = Dropout(dropout);
            register_module("lora_dropout", lora_dropout);
        }
        if (init == LoraInit.Default)
        {
            using var _ = no_grad();
            nn.init.zeros_(lora_E);
            nn.init.normal_(lora_A, 0, 0.02);
            nn.init.normal_(lora_B, 0, 0.02);
        }
    }

    public override string MethodName => "adalora";

    /// <summary>The triplets this layer holds (its tensors' r).</summary>
    public int R { get; }

    /// <summary>The triplets still in use: all of <see cref="R"/> until an allocation masks some.</summary>
    public override int? Rank => Kept?.Count(k => k) ?? R;

    /// <summary>α (PEFT's <c>scaling</c> for AdaLoRA, before the division by ranknum).</summary>
    public double Alpha { get; }

    /// <summary>Which triplets the last allocation kept (null: all). Set by <see cref="AdaLoraAllocator"/>; a save
    /// writes only the kept rows of A and E and columns of B, as PEFT does.</summary>
    public IReadOnlyList<bool>? Kept { get; internal set; }

    /// <summary>Q, the right singular vectors [r, in].</summary>
    public Parameter A => lora_A;

    /// <summary>Λ, the singular values [r, 1].</summary>
    public Parameter E => lora_E;

    /// <summary>P, the left singular vectors [out, r].</summary>
    public Parameter B => lora_B;

    /// <summary>PEFT's <c>ranknum</c> [1]: init_r, the denominator of the scale.</summary>
    public Tensor RankNumber => ranknum;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var input = lora_dropout is null ? x : lora_dropout.call(x);
        // PEFT: (dropout(x) @ (A * E).T @ B.T) * scaling / (ranknum + 1e-5), in this order.
        var update = input.matmul(lora_A.mul(lora_E).t()).matmul(lora_B.t()).mul(Alpha).div(ranknum + 1e-5);   // (..., out)
        return result.add_(update);
    }

    /// <summary>dW = B (A ⊙ E) · α / (ranknum + 1e-5), [out, in].</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return lora_B.matmul(lora_A.mul(lora_E)).mul(Alpha).div(ranknum + 1e-5).MoveToOuterDisposeScope();
    }

    /// <summary>lora_A, lora_E, lora_B; ranknum is left out (PEFT recomputes it from the config).</summary>
    public override IEnumerable<(string Name, Tensor Tensor)> FileTensors() => base.FileTensors().Where(t => t.Name != "ranknum");

    /// <summary>The kept triplets only (PEFT's <c>resize_state_dict_by_rank_pattern</c>): rows of A and E, columns of B.</summary>
    public override IEnumerable<(string Name, Tensor Value)> TensorsForFile(bool asPlainDelta)
    {
        if (Kept is not { } kept || kept.All(k => k))
        {
            foreach (var t in FileTensors()) yield return t;
            yield break;
        }
        var index = tensor(kept.Select((k, i) => (k, i)).Where(p => p.k).Select(p => (long)p.i).ToArray(), device: lora_A.device);
        yield return ("lora_A", lora_A.detach().index_select(0, index));
        yield return ("lora_E", lora_E.detach().index_select(0, index));
        yield return ("lora_B", lora_B.detach().index_select(1, index));
    }
}

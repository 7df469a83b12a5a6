using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// LoRA on an Embedding (PEFT's lora.Embedding): result += s · (Aᵀ[ids]) Bᵀ with <c>lora_embedding_A</c> [r, vocab]
/// and <c>lora_embedding_B</c> [dim, r]; A starts at zero and B normal, so the adapter starts as the identity.
/// </summary>
public sealed class LoraEmbeddingAdapter : WeightDeltaAdapter
{
    readonly Parameter lora_embedding_A;
    readonly Parameter lora_embedding_B;

    public LoraEmbeddingAdapter(int r, double scaling, Tensor baseWeight, LoraInit? init) : base(nameof(LoraEmbeddingAdapter))
    {
        R = r;
        Scaling = scaling;
        long vocabulary = baseWeight.shape[0], dim = baseWeight.shape[1];
        lora_embedding_A = new Parameter(randn(r, vocabulary, dtype: baseWeight.dtype, device: baseWeight.device));
        lora_embedding_B = new Parameter(randn(dim, r, dtype: baseWeight.dtype, device: baseWeight.device));
        if (init is not null && init != LoraInit.Random)
            using (no_grad())
            {
                nn.init.zeros_(lora_embedding_A);
                nn.init.normal_(lora_embedding_B);
            }
        register_parameter("lora_embedding_A", lora_embedding_A);
        register_parameter("lora_embedding_B", lora_embedding_B);
    }

    public override string MethodName => "lora";

    public int R { get; }

    public override int? Rank => R;

    public double Scaling { get; internal set; }

    /// <summary><c>lora_embedding_A</c> [r, vocab].</summary>
    public Parameter A => lora_embedding_A;

    /// <summary><c>lora_embedding_B</c> [dim, r].</summary>
    public Parameter B => lora_embedding_B;

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var ids = x.reshape(-1);                                                  // (N)
        var afterA = lora_embedding_A.t().index_select(0, ids);                   // (N, r)
        var result2d = result.view(-1, result.shape[^1]);                         // (N, dim)
        result2d.addmm_(afterA, lora_embedding_B.t(), beta: 1, alpha: (float)Scaling);
        return result;
    }

    /// <summary>dW = s · (B A)ᵀ (vocab × dim), the shape of the embedding table.</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return lora_embedding_B.matmul(lora_embedding_A).t().mul(Scaling).MoveToOuterDisposeScope();
    }
}

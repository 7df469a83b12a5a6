using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// IncreLoRA on a Linear layer: result += dropout(x) · (A ⊙ E)ᵀ · Bᵀ · α / r₀, AdaLoRA's SVD form with A = Q [r, in],
/// E = Λ [r, 1], B = P [out, r], where r grows during training.
/// <para>Storage: the triplets the layer was created with are one block, <c>lora_A</c> [r, in], <c>lora_E</c> [r, 1],
/// <c>lora_B</c> [out, r]; every triplet added by <see cref="Grow"/> is its own rank-1 block of new parameters,
/// <c>lora_A_k</c> [1, in], <c>lora_E_k</c> [1, 1], <c>lora_B_k</c> [out, 1] (k = the triplet's index). So growing
/// never replaces a parameter: the tensors that train keep their identity, and the optimizer keeps their moments
/// (<see cref="Training.AdamWOptimizer"/> holds state per parameter object and starts the new ones from zero, with
/// their own bias correction). The forward concatenates the blocks. A file holds the concatenation under PEFT-style
/// names (<c>lora_A</c>, <c>lora_E</c>, <c>lora_B</c>), and a grown adapter loads back as one block of its grown rank.</para>
/// <para>Advance learning (<see cref="IncreLoraConfig.AdvanceLearn"/>): the layer keeps one reserved triplet, already
/// registered under the name it will have once added, with λ = 0 and frozen and p, q ~ N(0, 0.02²) that train through
/// the orthogonality regulariser only (with λ = 0 they get no gradient from the task, so the model's function does not
/// depend on them); <see cref="Grow"/> turns it into the next triplet and reserves a new one. The reserve is not part of
/// the forward, of <see cref="Rank"/> or of the file.</para>
/// </summary>
public sealed class IncreLoraLinearAdapter : WeightDeltaAdapter
{
    readonly List<(Parameter A, Parameter E, Parameter B)> _blocks = [];
    (Parameter A, Parameter E, Parameter B)? _reserve;
    readonly Dropout? lora_dropout;
    readonly long _in, _out;

    /// <param name="r">The rank this layer is created with (init_r, or a grown rank when loading).</param>
    /// <param name="initR">init_r, the denominator of the scale α / init_r (fixed while rank grows).</param>
    /// <param name="loraAlpha">α.</param>
    /// <param name="dropout">lora_dropout on the adapter's input.</param>
    /// <param name="baseWeight">The base weight [out, in] (device and dtype of the new tensors).</param>
    /// <param name="init">true: E = 0, A and B ~ N(0, 0.02²); false: all standard normal; null when a file fills them next.</param>
    public IncreLoraLinearAdapter(int r, int initR, double loraAlpha, double dropout, Tensor baseWeight, LoraInit? init)
        : base(nameof(IncreLoraLinearAdapter))
    {
        InitR = initR;
        Alpha = loraAlpha;
        _out = baseWeight.shape[0];
        _in = baseWeight.shape[1];
        var a = new Parameter(randn(r, _in, dtype: baseWeight.dtype, device: baseWeight.device));
        var e = new Parameter(randn(r, 1, dtype: baseWeight.dtype, device: baseWeight.device));
        var b = new Parameter(randn(_out, r, dtype: baseWeight.dtype, device: baseWeight.device));
        register_parameter("lora_A", a);
        register_parameter("lora_E", e);
        register_parameter("lora_B", b);
        _blocks.Add((a, e, b));
        if (dropout > 0)
        {
            lora_dropout = Dropout(dropout);
            register_module("lora_dropout", lora_dropout);
        }
        if (init == LoraInit.Default)
        {
            using var _ = no_grad();
            nn.init.zeros_(e);
            nn.init.normal_(a, 0, 0.02);
            nn.init.normal_(b, 0, 0.02);
        }
    }

    public override string MethodName => "increlora";

    /// <summary>init_r: the scale is α / init_r.</summary>
    public int InitR { get; }

    /// <summary>α.</summary>
    public double Alpha { get; }

    /// <summary>The number of triplets in use (the reserve not counted).</summary>
    public override int? Rank => _blocks.Sum(t => (int)t.E.shape[0]);

    /// <summary>The blocks of triplets in use, in order: the one the layer was created with, then one per
    /// <see cref="Grow"/>.</summary>
    public IReadOnlyList<(Parameter A, Parameter E, Parameter B)> Blocks => _blocks;

    /// <summary>The reserved triplet (advance learning), or null.</summary>
    public (Parameter A, Parameter E, Parameter B)? Reserve => _reserve;

    /// <summary>Q, all triplets in use [r, in] (a concatenation when the layer has grown).</summary>
    public Tensor A => _blocks.Count == 1 ? _blocks[0].A : cat(_blocks.Select(t => (Tensor)t.A).ToList(), 0);

    /// <summary>Λ, all triplets in use [r, 1].</summary>
    public Tensor E => _blocks.Count == 1 ? _blocks[0].E : cat(_blocks.Select(t => (Tensor)t.E).ToList(), 0);

    /// <summary>P, all triplets in use [out, r].</summary>
    public Tensor B => _blocks.Count == 1 ? _blocks[0].B : cat(_blocks.Select(t => (Tensor)t.B).ToList(), 1);

    /// <summary>Keeps a reserved triplet for advance learning (λ = 0 frozen; p, q ~ N(0, 0.02²), trainable when
    /// <paramref name="trains"/>); nothing if there is one.</summary>
    public void EnsureReserve(bool trains)
    {
        if (_reserve is not null) return;
        _reserve = NewTriplet(Rank!.Value, trains);
    }

    /// <summary>
    /// Adds one triplet: the reserved one if there is (then a new one is reserved), else a fresh one with λ = 0 and
    /// p, q ~ N(0, 0.02²). λ = 0 keeps the model's function as it was. Returns the added triplet, its λ trainable when
    /// <paramref name="trains"/> (the allocator warms it up). The new parameters are out of every dispose scope.
    /// </summary>
    public (Parameter A, Parameter E, Parameter B) Grow(bool trains)
    {
        int index = Rank!.Value;
        (Parameter A, Parameter E, Parameter B) added;
        if (_reserve is { } reserve)
        {
            added = reserve;
            reserve.E.requires_grad = trains;
            _reserve = NewTriplet(index + 1, trains);
        }
        else
        {
            added = NewTriplet(index, trains);
            added.E.requires_grad = trains;
        }
        _blocks.Add(added);
        return added;
    }

    // A rank-1 triplet registered as lora_A_k / lora_E_k / lora_B_k: λ = 0 (frozen until added), p and q ~ N(0, 0.02²).
    (Parameter A, Parameter E, Parameter B) NewTriplet(int index, bool trains)
    {
        var like = _blocks[0].A;
        Parameter a, e, b;
        using (NewDisposeScope())
        using (no_grad())
        {
            a = new Parameter(empty(1, _in, dtype: like.dtype, device: like.device), trains);
            e = new Parameter(zeros(1, 1, dtype: like.dtype, device: like.device), requires_grad: false);
            b = new Parameter(empty(_out, 1, dtype: like.dtype, device: like.device), trains);
            nn.init.normal_(a, 0, 0.02);
            nn.init.normal_(b, 0, 0.02);
            a.DetachFromDisposeScope();
            e.DetachFromDisposeScope();
            b.DetachFromDisposeScope();
        }
        register_parameter($"lora_A_{index}", a);
        register_parameter($"lora_E_{index}", e);
        register_parameter($"lora_B_{index}", b);
        return (a, e, b);
    }

    /// <summary>Every tensor trains but the reserved triplet's λ (it stays 0 until the triplet is added).</summary>
    public override bool Trains(string name) => _reserve is not { } reserve || !ReferenceEquals(get_parameter(name), reserve.E);

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer)
    {
        var input = lora_dropout is null ? x : lora_dropout.call(x);
        var update = input.matmul(A.mul(E).t()).matmul(B.t()).mul(Alpha / InitR);   // (..., out)
        return result.add_(update);
    }

    /// <summary>dW = B (A ⊙ E) · α / init_r, [out, in].</summary>
    public override Tensor DeltaWeight(Module<Tensor, Tensor> baseLayer)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return B.matmul(A.mul(E)).mul(Alpha / InitR).MoveToOuterDisposeScope();
    }

    /// <summary>The tensors a file loads into: lora_A, lora_E, lora_B of a layer that has not grown (a layer is always
    /// created as one block, at its file rank). A grown layer has no single tensor to load into and refuses.</summary>
    public override IEnumerable<(string Name, Tensor Tensor)> FileTensors()
    {
        if (_blocks.Count != 1)
            throw new InvalidOperationException($"This IncreLoRA layer has grown to {_blocks.Count} blocks (rank {Rank}); load a file into a freshly created adapter of that rank.");
        yield return ("lora_A", _blocks[0].A);
        yield return ("lora_E", _blocks[0].E);
        yield return ("lora_B", _blocks[0].B);
    }

    /// <summary>The triplets in use, concatenated: lora_A [r, in], lora_E [r, 1], lora_B [out, r] (the reserve left out).</summary>
    public override IEnumerable<(string Name, Tensor Value)> TensorsForFile(bool asPlainDelta)
    {
        if (_blocks.Count == 1)
        {
            foreach (var t in FileTensors()) yield return t;
            yield break;
        }
        yield return ("lora_A", A.detach());
        yield return ("lora_E", E.detach());
        yield return ("lora_B", B.detach());
    }
}

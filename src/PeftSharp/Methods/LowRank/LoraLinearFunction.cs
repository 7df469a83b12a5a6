using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// y = x Wᵀ + b + s·((x ⊙ m) Aᵀ) Bᵀ for a frozen Linear (W, b) and one LoRA adapter (A, B) as a single autograd node,
/// with m the dropout noise (0 or 1/(1 − p) per entry) in training, or no m.
/// Written by hand because autograd's version of the same sum costs a full-size gradient buffer more per layer: x
/// feeds both the base and A, so autograd makes dL/dx twice, (N, in) each, and adds them; here dL/dx = g W + s (g B) A
/// is accumulated in place. Saves only x (which the model keeps anyway), the small (N, r) hidden state and, with dropout,
/// m as a 1-byte mask; m and x ⊙ m are made again in the backward rather than kept (autograd's dropout followed by a
/// Linear keeps both, as floats).
/// <para id="Skinny">Every product with the rank r as one side is written so that the long N dimension is the last one of
/// the result: libtorch 2.10's CPU matrix product (its MKL path) is slow on (large, transposed) × (large, r) shapes.
/// Measured on 2 threads, N 4096, out 2048, in 512, r 8, minimum of 10: gᵀ h 70.3 ms against (hᵀ g)ᵀ 5.6 ms, g B 10.3 ms
/// against (Bᵀ gᵀ)ᵀ 5.0 ms, x Aᵀ 1.7 ms against (A xᵀ)ᵀ 1.0 ms; the first of these alone cost as much as the layer's
/// whole input gradient g W (104 ms). Autograd's own backward of a Linear of rank r computes gᵀ h the slow way, which is
/// why the unfused path trained LoRA hardly faster than full fine-tuning. (Debian's PyTorch 1.13 with OpenBLAS does these
/// shapes fast; its PEFT-style LoRA step is slow for its full-size elementwise temporaries instead: README, "Against
/// PyTorch".)</para>
/// </summary>
/// <remarks>
/// TorchSharp's custom-function bridge leaves two kinds of managed handles for the garbage collector: the wrapper of
/// the incoming gradient and the wrappers of the returned gradients (native code copies those right after
/// <see cref="backward"/> returns). Left alone they keep one (N, out) and one (N, in) buffer per layer alive through
/// the whole backward pass, more memory than the fusion saves; so the first is disposed here and the second at the
/// start of the next backward call on the same thread. Per thread, because the native copy happens after the return: a
/// list shared by all threads let one training thread dispose another's gradients before libtorch had copied them (and
/// made the live-tensor count of each thread drift; a CI run saw it). libtorch runs a CPU backward on the thread that
/// called it, so the next call on that thread comes after the copy. TorchSharp also caches an uninitialised tensor the size of each output per node,
/// which costs no resident memory on the CPU but real memory on a GPU, so the fused path is used on the CPU only.
/// </remarks>
sealed class LoraLinearFunction : autograd.SingleTensorFunction<LoraLinearFunction>
{
    [ThreadStatic] static List<Tensor>? _returnedLastTime;
    public override string Name => "LoraLinear";

    /// <summary>
    /// s · B A x alone as one node with the fast backward (no base Linear): for the paths that cannot fuse the base
    /// (several active adapters, a base that trains, DoRA), where autograd's Linear backward would compute B's gradient
    /// as the slow gᵀ h. On the CPU (with or without a graph, the same arithmetic); elsewhere two Linears. (..., in) → (..., out).
    /// </summary>
    internal static Tensor LowRank(Tensor input, Tensor a, Tensor b, double scaling)
    {
        if (input.device_type != DeviceType.CPU || !input.is_floating_point())
        {
            var hidden = nn.functional.linear(input, a);                           // (..., r)
            if (scaling != 1) hidden.mul_(scaling);                                // s on the small side
            return nn.functional.linear(hidden, b);                                // (..., out)
        }
        if (is_grad_enabled() && (input.requires_grad || a.requires_grad || b.requires_grad))
            return apply(input, null!, null!, a, b, scaling, null!, 0.0);
        // No graph to build: the node's arithmetic, straight, so a frozen adapter computes what a training one does.
        var low = a.mm(input.reshape(-1, input.shape[^1]).t()).t().mm(b.t());      // (N, out)
        if (scaling != 1) low.mul_(scaling);
        return low.view([.. input.shape[..^1], b.shape[0]]);                       // (..., out)
    }

    /// <summary>vars: x (..., in), W (out, in) or null (then the node is s · B A (x ⊙ m) alone), b (out) or null,
    /// A (r, in), B (out, r), scaling (double), dropout noise m (..., in) or null, the dropout probability p (double; m is
    /// 0 or 1/(1 − p)). Always eight: the backward returns one gradient per argument.</summary>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var weight = vars[1] as Tensor;
        var bias = vars[2] as Tensor;
        var a = (Tensor)vars[3];
        var b = (Tensor)vars[4];
        var scaling = (double)vars[5];
        var noise = vars[6] as Tensor;
        var dropout = (double)vars[7];

        var x2d = x.reshape(-1, x.shape[^1]);                                       // (N, in)
        var noise2d = noise?.reshape(-1, x.shape[^1]);                               // (N, in) or null
        var dropped2d = noise2d is null ? x2d : x2d.mul(noise2d);                    // (N, in): what A sees
        // The small products are written with the long N dimension last (A xᵀ rather than x Aᵀ): libtorch's CPU matrix
        // product is several times slower on a (large, transposed) x (small) shape than on its transpose (see Skinny).
        var hiddenT = a.mm(dropped2d.t());                                           // (r, N) = ((x ⊙ m) Aᵀ)ᵀ
        if (noise2d is not null) dropped2d.Dispose();                                // made again in the backward
        Tensor y;
        if (weight is null)
        {
            var low = hiddenT.t().mm(b.t());                                         // (N, out)
            if (scaling != 1) low.mul_(scaling);
            y = low.view([.. x.shape[..^1], b.shape[0]]);                            // (..., out)
        }
        else
        {
            // The base part exactly as nn.Linear computes it, so a LoRA with B = 0 gives the base output bit for bit.
            y = nn.functional.linear(x, weight, bias);                               // (..., out)
            y.view(-1, y.shape[^1]).addmm_(hiddenT.t(), b.t(), beta: 1, alpha: (float)scaling);
        }
        List<Tensor> saved = [x2d, hiddenT, a, b];
        if (weight is not null) saved.Add(weight);
        // m is kept as a 1-byte mask, a quarter of its float size: the backward makes m again by the same two operations
        // the forward's caller used (0/1 as floats, divided by 1 − p), so its values are the same bits.
        if (noise2d is not null) saved.Add(noise2d.ne(0));
        ctx.save_for_backward(saved);
        ctx.save_data("keep", 1 - dropout);
        ctx.save_data("scaling", scaling);
        ctx.save_data("input_shape", x.shape);
        ctx.save_data("has", new[] { weight is not null, noise2d is not null });
        ctx.save_data("needs", new[] { x.requires_grad, a.requires_grad, b.requires_grad });
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        if (_returnedLastTime is { } returned)
            foreach (var t in returned) t.Dispose();
        _returnedLastTime = null;
        // Backward runs outside any caller's scope: without this one every temporary would wait for the collector.
        using var scope = NewDisposeScope();
        var saved = ctx.get_saved_variables();
        var (x2d, hiddenT, a, b) = (saved[0], saved[1], saved[2], saved[3]);
        var has = (bool[])ctx.get_data("has");
        var weight = has[0] ? saved[4] : null;                                       // (out, in): the frozen base, or none
        var noise2d = has[1] ? saved[^1].to(x2d.dtype).div_((double)ctx.get_data("keep")) : null;   // (N, in): dropout's m, or none
        var scaling = (double)ctx.get_data("scaling");
        var shape = (long[])ctx.get_data("input_shape");
        var needs = (bool[])ctx.get_data("needs");

        var g2d = gradOutput.reshape(-1, gradOutput.shape[^1]);                     // (N, out)
        var gHiddenT = b.t().mm(g2d.t());                                            // (r, N): (dL/dhidden / s)ᵀ = (g B)ᵀ
        Tensor? gradX = null, gradA = null, gradB = null;
        if (needs[0])
        {
            if (weight is not null && noise2d is null)
            {
                gradX = g2d.mm(weight);                                              // (N, in)
                gradX.addmm_(gHiddenT.t(), a, beta: 1, alpha: (float)scaling);
            }
            else
            {
                var low = gHiddenT.t().mm(a);                                        // (N, in): dL/d(x ⊙ m) / s
                if (noise2d is not null) low.mul_(noise2d);                          // dropout passes the gradient through m
                gradX = weight is null ? (scaling == 1 ? low : low.mul_(scaling)) : g2d.mm(weight).add_(low, alpha: scaling);
            }
            gradX = gradX.view(shape).MoveToOuterDisposeScope();
        }
        if (needs[1]) gradA = gHiddenT.mm(noise2d is null ? x2d : x2d.mul(noise2d)).mul_(scaling).MoveToOuterDisposeScope();   // (r, in)
        // gᵀ h as (hᵀ g)ᵀ: 70 ms against 5.6 ms for N 4096, out 2048, r 8 on 2 threads (Skinny).
        if (needs[2]) gradB = hiddenT.mm(g2d).mul_(scaling).t().contiguous().MoveToOuterDisposeScope();          // (out, r)
        gradOutput.Dispose();
        _returnedLastTime = new[] { gradX, gradA, gradB }.OfType<Tensor>().ToList();
        return [gradX!, null!, null!, gradA!, gradB!, null!, null!, null!];   // one per argument: x, W, b, A, B, s, m, p
    }
}

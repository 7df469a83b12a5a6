using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>
/// A small multilayer perceptron: <c>lin0</c> → ReLU → <c>lin1</c> → ReLU → <c>head</c>. With the default sizes
/// (16 → 32 → 32 → 8) it is the model of the Hugging Face PEFT reference fixtures, module names included.
/// Fields are typed <c>Module&lt;Tensor, Tensor&gt;</c> so adapters can take their place.
/// </summary>
public sealed class Mlp : Module<Tensor, Tensor>, IHasOutputHead
{
    Module<Tensor, Tensor> lin0;
    Module<Tensor, Tensor> lin1;
    Module<Tensor, Tensor> head;

    public Mlp(int inputs = 16, int hidden = 32, int outputs = 8) : base(nameof(Mlp))
    {
        lin0 = Linear(inputs, hidden);
        lin1 = Linear(hidden, hidden);
        head = Linear(hidden, outputs);
        RegisterComponents();
    }

    public string? OutputHeadPath => "head";

    public override Tensor forward(Tensor x)                       // (..., inputs) -> (..., outputs)
    {
        using var scope = NewDisposeScope();
        var h = functional.relu(lin0.call(x));
        h = functional.relu(lin1.call(h));
        return head.call(h).MoveToOuterDisposeScope();
    }
}

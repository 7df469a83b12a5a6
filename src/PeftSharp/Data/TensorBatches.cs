using static TorchSharp.torch;

namespace PeftSharp.Data;

/// <summary>A batch of token sequences: <c>InputIds</c> (B, T) int64, <c>AttentionMask</c> (B, T) int64 (1 = token,
/// 0 = padding) and <c>Labels</c> (int64: (B) for sequence classification; (B, T) for token classification and
/// language modelling, with <see cref="TokenClassificationSet.IgnoreIndex"/> where no loss applies).</summary>
public sealed record TokenTensors(Tensor InputIds, Tensor AttentionMask, Tensor Labels) : IDisposable
{
    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        Labels.Dispose();
    }
}

/// <summary>A batch of images: <c>Images</c> (B, 1, 28, 28) float32 in [0, 1] and <c>Labels</c> (B) int64.</summary>
public sealed record ImageTensors(Tensor Images, Tensor Labels) : IDisposable
{
    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}

/// <summary>A batch of the multi-task suite: <c>TaskIds</c> (B) int64, <c>Inputs</c> (B, 16) float32, <c>Targets</c>
/// (B, 4) float32 (regression) and <c>Labels</c> (B) int64 (classification).</summary>
public sealed record MultiTaskTensors(Tensor TaskIds, Tensor Inputs, Tensor Targets, Tensor Labels) : IDisposable
{
    public void Dispose()
    {
        TaskIds.Dispose();
        Inputs.Dispose();
        Targets.Dispose();
        Labels.Dispose();
    }
}

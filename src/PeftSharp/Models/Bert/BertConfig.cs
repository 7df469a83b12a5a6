namespace PeftSharp.Models.Bert;

/// <summary>
/// Sizes of a <see cref="BertModel"/>, with Hugging Face <c>BertConfig</c>'s meaning (<c>hidden_size</c> is
/// <see cref="HiddenSize"/>, ...). The defaults are all-MiniLM-L6-v2's.
/// </summary>
public sealed record BertConfig
{
    public int VocabSize { get; init; } = 30522;

    public int HiddenSize { get; init; } = 384;

    public int NumHiddenLayers { get; init; } = 6;

    public int NumAttentionHeads { get; init; } = 12;

    public int IntermediateSize { get; init; } = 1536;

    public int MaxPositionEmbeddings { get; init; } = 512;

    public int TypeVocabSize { get; init; } = 2;

    public double LayerNormEps { get; init; } = 1e-12;

    /// <summary>Dropout on embeddings and on each sublayer's output, in training mode only.</summary>
    public double HiddenDropoutProb { get; init; } = 0.1;

    /// <summary>Dropout on attention probabilities, in training mode only.</summary>
    public double AttentionProbsDropoutProb { get; init; } = 0.1;

    /// <summary>Whether the model has Hugging Face's <c>pooler</c> (dense + tanh on the [CLS] vector).</summary>
    public bool AddPoolingLayer { get; init; } = true;

    public int HeadSize => HiddenSize / NumAttentionHeads;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first field out of range.</summary>
    public void Validate()
    {
        static void Positive(int value, string name)
        {
            if (value < 1) throw new ArgumentOutOfRangeException(name, value, $"{name} must be at least 1.");
        }
        Positive(VocabSize, nameof(VocabSize));
        Positive(HiddenSize, nameof(HiddenSize));
        Positive(NumHiddenLayers, nameof(NumHiddenLayers));
        Positive(NumAttentionHeads, nameof(NumAttentionHeads));
        Positive(IntermediateSize, nameof(IntermediateSize));
        Positive(MaxPositionEmbeddings, nameof(MaxPositionEmbeddings));
        Positive(TypeVocabSize, nameof(TypeVocabSize));
        if (HiddenSize % NumAttentionHeads != 0)
            throw new ArgumentOutOfRangeException(nameof(NumAttentionHeads), NumAttentionHeads, $"HiddenSize {HiddenSize} must be a multiple of NumAttentionHeads.");
        if (LayerNormEps <= 0) throw new ArgumentOutOfRangeException(nameof(LayerNormEps), LayerNormEps, "LayerNormEps must be positive, e.g. 1e-12.");
        if (HiddenDropoutProb is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(HiddenDropoutProb), HiddenDropoutProb, "HiddenDropoutProb is in [0, 1).");
        if (AttentionProbsDropoutProb is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(AttentionProbsDropoutProb), AttentionProbsDropoutProb, "AttentionProbsDropoutProb is in [0, 1).");
    }
}

using PeftSharp.Adapters;
using PeftSharp.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Methods.Activation;

/// <summary>Prompt tuning's virtual tokens (Lester et al. 2021, §2), (P, C), put before the input embeddings through the
/// model's <see cref="IPromptHost.InputPrompt"/> while the adapter is on. File key <c>prompt_embeddings</c> (PEFT).</summary>
public sealed class PromptEmbedding : ModelAdapter, IInputPrompt
{
    readonly Parameter embedding;
    readonly Func<IPromptHost> _host;   // a delegate: a Module-typed field would be registered as a child

    public PromptEmbedding(PromptTuningConfig config, IPromptHost host, bool initialize) : base(nameof(PromptEmbedding))
    {
        _host = () => host;
        var words = host.InputEmbeddingWeight;                                                      // (V, C)
        int p = config.NumVirtualTokens;
        Tensor initial;
        using (NewDisposeScope())   // index_select, detach and randint leave handles behind
        using (no_grad())
        {
            if (!initialize) initial = zeros(p, host.HiddenSize, dtype: words.dtype, device: words.device);
            else initial = config.PromptTuningInit switch
            {
                PromptTuningInit.SampleVocab => words.index_select(0, randint(0, words.shape[0], [p], dtype: ScalarType.Int64, device: words.device)).detach().clone(),
                PromptTuningInit.Text => words.index_select(0, tensor(Enumerable.Range(0, p).Select(i => (long)config.InitTokenIds![i % config.InitTokenIds.Count]).ToArray(), device: words.device)).detach().clone(),
                _ => randn(p, host.HiddenSize, dtype: words.dtype, device: words.device),
            };
            initial.DetachFromDisposeScope();
        }
        embedding = new Parameter(initial);
        register_parameter("embedding", embedding);
        Length = p;
    }

    public override string MethodName => "prompt-tuning";

    public override bool SupportsPerRow => false;

    public override string? CannotMergeReason => "prompt tuning adds virtual tokens to the input, not a change of weights.";

    public int Length { get; }

    /// <summary>(P, C).</summary>
    public Parameter Weight => embedding;

    public Tensor Embeddings(long batchSize) => embedding.unsqueeze(0).expand(batchSize, -1, -1);   // (B, P, C)

    public override IEnumerable<(string Key, Tensor Parameter)> FileParameters() => [(PromptLearningConfig.FileKey, embedding)];

    public override AdapterConfig Complete(AdapterConfig config) => ((PromptLearningConfig)config).WithSizesOf(_host());

    protected override void Activate(Module model)
    {
        var host = _host();
        if (host.InputPrompt is { } other && !ReferenceEquals(other, this))
            throw new InvalidOperationException("Another prompt-tuning adapter is active on this model; activate one prompt at a time.");
        host.InputPrompt = this;
    }

    protected override void Deactivate(Module model)
    {
        var host = _host();
        if (ReferenceEquals(host.InputPrompt, this)) host.InputPrompt = null;
    }
}

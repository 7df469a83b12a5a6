using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models.Vit;

/// <summary>
/// Patch embedding (HF <c>ViTPatchEmbeddings</c>): the image is cut into non-overlapping P x P patches, each flattened
/// (channel, row, column) and mapped by the Linear <c>projection</c>. Hugging Face uses a Conv2d with kernel and stride
/// P, which computes the same thing: its weight (C, channels, P, P) is this weight (C, channels·P·P) reshaped. A Linear
/// lets LoRA and the other Linear adapters go here too.
/// </summary>
public sealed class VitPatchEmbeddings : Module<Tensor, Tensor>
{
    [ComponentName(Name = "projection")] Module<Tensor, Tensor> _projection;
    readonly VitConfig _config;

    public VitPatchEmbeddings(VitConfig config) : base(nameof(VitPatchEmbeddings))
    {
        _config = config;
        _projection = Linear(config.Channels * config.PatchSize * config.PatchSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor images)                  // (B, channels, H, W) -> (B, N, C)
    {
        using var scope = NewDisposeScope();
        long b = images.shape[0];
        int p = _config.PatchSize, side = _config.PatchesPerSide, ch = _config.Channels;
        var patches = images.reshape(b, ch, side, p, side, p).permute(0, 2, 4, 1, 3, 5)   // (B, rows, cols, channels, P, P)
                            .reshape(b, side * side, ch * p * p);                            // (B, N, channels·P·P)
        return _projection.call(patches).MoveToOuterDisposeScope();
    }
}

/// <summary>[CLS] token + patch embeddings + learned positions (HF <c>ViTEmbeddings</c>).</summary>
public sealed class VitEmbeddings : Module<Tensor, Tensor>
{
    [ComponentName(Name = "cls_token")] readonly Parameter _clsToken;
    [ComponentName(Name = "position_embeddings")] readonly Parameter _positionEmbeddings;
    [ComponentName(Name = "patch_embeddings")] readonly VitPatchEmbeddings _patchEmbeddings;

    public VitEmbeddings(VitConfig config) : base(nameof(VitEmbeddings))
    {
        _clsToken = Parameter(randn(1, 1, config.HiddenSize) * 0.02);
        _positionEmbeddings = Parameter(randn(1, config.Patches + 1, config.HiddenSize) * 0.02);
        _patchEmbeddings = new VitPatchEmbeddings(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor images)                  // (B, channels, H, W) -> (B, 1 + N, C)
    {
        using var scope = NewDisposeScope();
        var patches = _patchEmbeddings.call(images);
        var cls = _clsToken.expand(patches.shape[0], -1, -1);
        return (cat([cls, patches], 1) + _positionEmbeddings).MoveToOuterDisposeScope();
    }
}

/// <summary>The encoder's layers (HF <c>ViTEncoder</c>, <c>encoder.layer.N</c>).</summary>
public sealed class VitEncoder : Module<Tensor, Tensor>
{
    [ComponentName(Name = "layer")] readonly ModuleList<Module<Tensor, Tensor>> _layer;

    public VitEncoder(VitConfig config) : base(nameof(VitEncoder))
    {
        _layer = new ModuleList<Module<Tensor, Tensor>>(Enumerable.Range(0, config.Layers).Select(_ => (Module<Tensor, Tensor>)new VitLayer(config)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var layer in _layer) x = layer.call(x);
        return x;
    }
}

/// <summary>Embeddings, encoder and the final <c>layernorm</c> (HF <c>ViTModel</c> without the pooler).</summary>
public sealed class VitModel : Module<Tensor, Tensor>
{
    [ComponentName(Name = "embeddings")] readonly VitEmbeddings _embeddings;
    [ComponentName(Name = "encoder")] readonly VitEncoder _encoder;
    [ComponentName(Name = "layernorm")] readonly LayerNorm _layernorm;

    public VitModel(VitConfig config) : base(nameof(VitModel))
    {
        _embeddings = new VitEmbeddings(config);
        _encoder = new VitEncoder(config);
        _layernorm = LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor images)                  // (B, channels, H, W) -> (B, 1 + N, C)
    {
        using var scope = NewDisposeScope();
        return _layernorm.call(_encoder.call(_embeddings.call(images))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A small Vision Transformer (Dosovitskiy et al. 2021) for classification, with the module names of Hugging Face's
/// <c>ViTForImageClassification</c>, so PEFT target lists for ViT apply unchanged: <c>vit.embeddings.patch_embeddings.projection</c>
/// (a Linear over flattened patches instead of HF's equivalent Conv2d), <c>vit.encoder.layer.N.attention.attention.{query,key,value}</c>,
/// <c>...attention.output.dense</c>, <c>...intermediate.dense</c>, <c>...output.dense</c>, <c>vit.layernorm</c>, and
/// <c>classifier</c> on the [CLS] token. Input (B, channels, H, W) in [0, 1]; output logits (B, labels).
/// </summary>
public sealed class VitForImageClassification : Module<Tensor, Tensor>, IHasOutputHead
{
    [ComponentName(Name = "vit")] readonly VitModel _vit;
    [ComponentName(Name = "classifier")] Module<Tensor, Tensor> _classifier;

    public VitForImageClassification(VitConfig config) : base(nameof(VitForImageClassification))
    {
        config.Validate();
        Config = config;
        _vit = new VitModel(config);
        _classifier = Linear(config.HiddenSize, config.Labels);
        RegisterComponents();
    }

    public VitConfig Config { get; private set; }

    public string? OutputHeadPath => "classifier";

    public override Tensor forward(Tensor images)                  // (B, channels, H, W) -> (B, labels)
    {
        int side = Config.ImageSize;
        if (images.dim() != 4 || images.shape[1] != Config.Channels || images.shape[2] != side || images.shape[3] != side)
            throw new ArgumentException($"Expected images of shape (batch, {Config.Channels}, {side}, {side}), got [{string.Join(", ", images.shape)}].", nameof(images));
        using var scope = NewDisposeScope();
        var cls = _vit.call(images).select(1, 0);                                       // (B, C): the [CLS] position
        return _classifier.call(cls).MoveToOuterDisposeScope();
    }

    /// <summary>Puts a new, freshly initialised <c>classifier</c> with <paramref name="labels"/> outputs in place of the
    /// old one (for a new task, e.g. Fashion-MNIST on the MNIST model), on the old one's device; returns it.</summary>
    public Module<Tensor, Tensor> ReplaceClassifier(int labels)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(labels, 1);
        var device = parameters().First().device;
        var head = Linear(Config.HiddenSize, labels, device: device);
        ModuleSurgery.PlanReplace(this, "classifier", head.GetType())(head);
        Config = Config with { Labels = labels };
        return head;
    }
}

using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>One row of the method matrix: a toy model, its input, and an adapter config.</summary>
/// <param name="ChangesBase">The init rewrites the base weight as a residual (PiSSA, OLoRA): outputs agree to float
/// rounding rather than bit for bit, and "the base" means the residual model.</param>
public sealed record MatrixCase(string Name, Func<Module<Tensor, Tensor>> Model, Func<Tensor> Input, Func<AdapterConfig> Config,
                                bool ChangesBase = false)
{
    public double Tolerance => ChangesBase ? 2e-5 : 1e-5;

    /// <summary>A second adapter for the two-adapter behaviours: the same method, except that methods which rewrite
    /// the base get a plain LoRA (a second residual init would rewrite the base under the first adapter).</summary>
    public AdapterConfig SecondConfig() =>
        Config() is LoraConfig lora && lora.InitLoraWeights.ChangesBaseWeights ? lora with { InitLoraWeights = LoraInit.Default } : Config();

    /// <summary>A model with fixed weights: every call gives the same base.</summary>
    public Module<Tensor, Tensor> NewModel(int seed = 7)
    {
        manual_seed(seed);
        var model = Model();
        model.eval();
        return model;
    }

    public Tensor NewInput(int seed = 11)
    {
        manual_seed(seed);
        return Input();
    }

    public override string ToString() => Name;
}

/// <summary>
/// The method matrix: every behaviour test runs over every row it applies to (as Hugging Face PEFT's
/// testing_common does). A new method adds rows here.
/// </summary>
public static class MethodMatrix
{
    static Module<Tensor, Tensor> MlpModel() => new Mlp();
    static Tensor MlpInput() => randn(4, 3, 16);
    static Module<Tensor, Tensor> Block() => new TransformerBlock(16, 2, 32);
    static Tensor BlockInput() => randn(4, 5, 16);
    static Module<Tensor, Tensor> TokenModel() => new TinyTransformer(new TransformerOptions(16, 2, 32, 1, 8, VocabSize: 50, MaxLength: 16));
    static Tensor TokenInput() => randint(0, 50, [4, 6], dtype: ScalarType.Int64);

    static readonly string[] BlockTargets = ["q", "k", "v", "o", "fc1", "fc2"];

    public static readonly IReadOnlyList<MatrixCase> Cases =
    [
        new("mlp-lora", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8 }),
        new("mlp-lora-rslora-dropout", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 16, UseRslora = true, LoraDropout = 0.1 }),
        new("mlp-lora-patterns", MlpModel, MlpInput, () => new LoraConfig
        {
            TargetModules = TargetModules.Regex("lin[01]"), R = 4, RankPattern = new Dictionary<string, int> { ["lin1"] = 2 },
            AlphaPattern = new Dictionary<string, double> { ["lin0"] = 32 },
        }),
        new("mlp-lora-gaussian", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Gaussian }),
        new("mlp-lora-bias-head", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0"], R = 4, Bias = "all", LoraBias = true, ModulesToSave = ["head"] }),
        new("mlp-dora", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, UseDora = true }),
        new("mlp-pissa", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Pissa }, ChangesBase: true),
        new("mlp-pissa-niter", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.PissaNiter(2) }, ChangesBase: true),
        new("mlp-olora", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Olora }, ChangesBase: true),
        new("block-lora", Block, BlockInput, () => new LoraConfig { TargetModules = BlockTargets, R = 4, LoraAlpha = 8 }),
        new("block-dora-dropout", Block, BlockInput, () => new LoraConfig { TargetModules = BlockTargets, R = 4, UseDora = true, LoraDropout = 0.1 }),
        new("block-pissa", Block, BlockInput, () => new LoraConfig { TargetModules = ["q", "v", "fc1"], R = 2, InitLoraWeights = LoraInit.Pissa }, ChangesBase: true),
        new("tokens-lora-embedding", TokenModel, TokenInput, () => new LoraConfig { TargetModules = ["embed", "q", "v"], R = 4 }),
        new("tokens-lora-all-linear", TokenModel, TokenInput, () => new LoraConfig { TargetModules = TargetModules.AllLinear, R = 2 }),
    ];

    public static IEnumerable<object[]> Names => Cases.Select(c => new object[] { c.Name });

    public static MatrixCase Get(string name) => Cases.Single(c => c.Name == name);
}

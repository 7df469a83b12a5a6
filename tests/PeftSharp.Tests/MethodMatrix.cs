using PeftSharp.Adapters;
using PeftSharp.Methods.Activation;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Methods.Decomposition;
using PeftSharp.Methods.LowRank;
using PeftSharp.Methods.Routing;
using PeftSharp.Models.Bert;
using PeftSharp.Models.Gpt;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>One row of the method matrix: a toy model, its input, and an adapter config.</summary>
/// <param name="ChangesBase">The init rewrites the base weight as a residual (PiSSA, OLoRA): outputs agree to float
/// rounding rather than bit for bit, and "the base" means the residual model.</param>
/// <param name="CanMerge">The method folds into the weights; rows that cannot are asserted to refuse clearly instead.</param>
/// <param name="IdentityAtInit">A fresh adapter leaves the output unchanged (not so for compositions over trained sources).</param>
/// <param name="PerRow">Rows of a batch can use different adapters; rows that cannot are asserted to refuse clearly.</param>
/// <param name="Sources">Adapters the row's adapter composes (ScaLearn, AdapterFusion): added (and perturbed) first.</param>
/// <param name="Method">The registered method the row exercises, where the config's own name does not say it (a preset
/// such as "pfeiffer", an init such as "pissa").</param>
/// <param name="Calibrate">For methods that need data before they attach: given the model, the calibration action passed to
/// <see cref="PeftModel.Create"/> (it runs the model on a few batches: CorDA reads its targets' input statistics; SPT also
/// calls backward on each loss).</param>
/// <param name="Second">The second adapter's config where <see cref="SecondConfig"/>'s default does not fit (a method
/// that needs calibration gets one with its allocation given, so that adding it needs no data).</param>
public sealed record MatrixCase(string Name, Func<Module<Tensor, Tensor>> Model, Func<Tensor> Input, Func<AdapterConfig> Config,
                                bool ChangesBase = false, bool CanMerge = true, bool IdentityAtInit = true, bool PerRow = true,
                                IReadOnlyList<(string Name, Func<AdapterConfig> Config)>? Sources = null, double RoundingTolerance = 0,
                                string? Method = null, Func<Module, Action>? Calibrate = null, Func<AdapterConfig>? Second = null)
{
    /// <summary>The registered method this row exercises.</summary>
    public string MethodName => Method ?? Config().MethodName;

    /// <summary>How far two runs that should agree bit for bit may differ: 0, except where a kernel may round
    /// differently (oneDNN's convolution on a reloaded weight) or the base was rewritten.</summary>
    public double ExactTolerance => ChangesBase ? Tolerance : RoundingTolerance;

    /// <summary>Puts the row's adapter into <paramref name="model"/> as "default" (after its sources) and activates it.</summary>
    public PeftModel Attach(Module model)
    {
        if (Sources is not { Count: > 0 }) return PeftModel.Create(model, Config(), calibrate: Calibrate?.Invoke(model));
        var peft = PeftModel.Create(model, Sources[0].Config(), Sources[0].Name);
        foreach (var (name, config) in Sources.Skip(1)) peft.AddAdapter(name, config());
        foreach (var (name, _) in Sources) Tensors.PerturbAdapters(peft, name, 0.3);
        peft.AddAdapter(PeftModel.DefaultAdapterName, Config());
        peft.SetActiveAdapters(PeftModel.DefaultAdapterName);
        return peft;
    }

    /// <summary>Loads what <see cref="PeftModel.Save"/> wrote for this row (sources first) and activates "default".</summary>
    public PeftModel Load(Module model, string directory)
    {
        if (Sources is not { Count: > 0 }) return PeftModel.Load(model, directory);
        var peft = PeftModel.Load(model, Path.Combine(directory, Sources[0].Name), Sources[0].Name);
        foreach (var (name, _) in Sources.Skip(1)) peft.LoadAdapter(Path.Combine(directory, name), name);
        peft.LoadAdapter(directory, PeftModel.DefaultAdapterName);
        peft.SetActiveAdapters(PeftModel.DefaultAdapterName);
        return peft;
    }

    public double Tolerance => ChangesBase ? 2e-5 : 1e-5;

    /// <summary>A second adapter for the two-adapter behaviours: the same method, except that methods which rewrite
    /// the base get a plain LoRA (a second residual init would rewrite the base under the first adapter).</summary>
    public AdapterConfig SecondConfig() =>
        Second?.Invoke() ?? (Config() is { RewritesBase: true } config ? config.PlainEquivalent() : Config());

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

    // Calibration for CorDA: the model on three batches of the row's input shape (own seed, so the rows stay reproducible).
    static Action CalibrateOn(Module model, Func<Tensor> input) => () =>
    {
        manual_seed(99);
        for (int i = 0; i < 3; i++) using (NewDisposeScope()) ((Module<Tensor, Tensor>)model).call(input());
    };

    static Module<Tensor, Tensor> TinyBertModel() => new TinyBert();
    static Tensor TinyBertInput() => randint(0, TinyBert.Vocabulary, [4, 6], dtype: ScalarType.Int64);

    // A two-layer Llama-style decoder (rotary positions, SwiGLU, tied head) with Hugging Face's module names.
    static Module<Tensor, Tensor> TinyGptModel() =>
        new GptForCausalLM(new GptConfig { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 });
    static Tensor TinyGptInput() => randint(0, 40, [4, 6], dtype: ScalarType.Int64);

    static AdapterConfig FfnBottleneck() => new BottleneckConfig { TargetModules = ["fc2"], BottleneckSize = 4 };
    static AdapterConfig MlpLora() => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 2 };
    static AdapterConfig BertPfeiffer() => BottleneckConfig.Pfeiffer() with { BottleneckSize = 4 };

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
        new("mlp-pissa", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Pissa }, ChangesBase: true, Method: "pissa"),
        new("mlp-pissa-niter", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.PissaNiter(2) }, ChangesBase: true, Method: "pissa"),
        new("mlp-olora", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Olora }, ChangesBase: true, Method: "olora"),
        new("block-lora", Block, BlockInput, () => new LoraConfig { TargetModules = BlockTargets, R = 4, LoraAlpha = 8 }),
        new("block-dora-dropout", Block, BlockInput, () => new LoraConfig { TargetModules = BlockTargets, R = 4, UseDora = true, LoraDropout = 0.1 }),
        new("block-pissa", Block, BlockInput, () => new LoraConfig { TargetModules = ["q", "v", "fc1"], R = 2, InitLoraWeights = LoraInit.Pissa }, ChangesBase: true, Method: "pissa"),
        new("tokens-lora-embedding", TokenModel, TokenInput, () => new LoraConfig { TargetModules = ["embed", "q", "v"], R = 4 }),
        new("tokens-lora-all-linear", TokenModel, TokenInput, () => new LoraConfig { TargetModules = TargetModules.AllLinear, R = 2 }),

        // (IA)³: output scaling on lin0 / k / v, input scaling on the feed-forward modules.
        new("mlp-ia3", MlpModel, MlpInput, () => new IA3Config { TargetModules = ["lin0", "lin1"], FeedforwardModules = ["lin1"] }),
        new("block-ia3", Block, BlockInput, () => new IA3Config { TargetModules = ["k", "v", "fc2"], FeedforwardModules = ["fc2"] }),

        // Bottleneck adapters (cannot merge).
        new("mlp-bottleneck", MlpModel, MlpInput, () => new BottleneckConfig { TargetModules = ["lin0", "lin1"], BottleneckSize = 4, NonLinearity = "swish" }, CanMerge: false),
        new("mlp-bottleneck-norms-learned-scale", MlpModel, MlpInput, () => new BottleneckConfig
        {
            TargetModules = ["lin1"], ReductionFactor = 8, LnBefore = true, LnAfter = true, ScalingMode = BottleneckScaling.Learned, Dropout = 0.1,
        }, CanMerge: false),
        new("block-bottleneck-after-norms", Block, BlockInput, () => new BottleneckConfig { TargetModules = ["ln1", "ln2"], BottleneckSize = 4, InitWeights = "mam_adapter" }, CanMerge: false),
        new("block-parallel-layer-input", Block, BlockInput, () => new BottleneckConfig
        {
            TargetModules = ["fc2"], IsParallel = true, ParallelInput = ParallelInput.LayerInput, BottleneckSize = 4, Scaling = 4, ScalingMode = BottleneckScaling.Channel,
        }, CanMerge: false),
        new("block-conv-adapter", Block, BlockInput, () => new BottleneckConfig { TargetModules = ["o", "fc2"], BottleneckSize = 4, ConvKernelSize = 3, NonLinearity = "gelu" }, CanMerge: false,
            RoundingTolerance: 1e-6),
        new("block-compacter", Block, BlockInput, () => new BottleneckConfig { TargetModules = ["o", "fc2"], BottleneckSize = 4, PhmLayer = true, PhmDim = 2 }, CanMerge: false),
        new("bert-pfeiffer", TinyBertModel, TinyBertInput, () => BottleneckConfig.Pfeiffer() with { BottleneckSize = 4 }, CanMerge: false, Method: "pfeiffer"),
        new("bert-houlsby", TinyBertModel, TinyBertInput, () => BottleneckConfig.Houlsby() with { BottleneckSize = 4 }, CanMerge: false, Method: "houlsby"),
        new("bert-parallel-sublayer-input", TinyBertModel, TinyBertInput, () => BottleneckConfig.Parallel() with { BottleneckSize = 4 }, CanMerge: false),
        new("tokens-invertible-with-inverse-head", TokenModel, TokenInput, () => new InvertibleAdapterConfig { TargetModules = ["embed", "head"], InverseModules = ["head"] }, CanMerge: false),
        new("bert-invertible", TinyBertModel, TinyBertInput, () => new InvertibleAdapterConfig { TargetModules = ["embeddings.LayerNorm"], NonLinearity = "gelu" }, CanMerge: false),

        // Bias and LayerNorm tuning (merge into the base).
        new("mlp-bitfit", MlpModel, MlpInput, () => new BitFitConfig()),
        new("bert-bitfit-attention", TinyBertModel, TinyBertInput, () => new BitFitConfig { TargetModules = TargetModules.Regex(@".*attention.*") }),
        new("block-ln-tuning", Block, BlockInput, () => new LnTuningConfig { TargetModules = ["ln1", "ln2"] }),
        new("bert-ln-tuning", TinyBertModel, TinyBertInput, () => new LnTuningConfig { TargetModules = ["LayerNorm"] }),
        // Prompts and prefixes (model hooks): not the identity at init, no merge, one adapter per batch.
        new("bert-prompt-tuning", TinyBertModel, TinyBertInput, () => new PromptTuningConfig { NumVirtualTokens = 3 }, CanMerge: false, IdentityAtInit: false, PerRow: false),
        new("bert-prompt-tuning-from-vocabulary", TinyBertModel, TinyBertInput, () => new PromptTuningConfig { NumVirtualTokens = 4, PromptTuningInit = PromptTuningInit.SampleVocab },
            CanMerge: false, IdentityAtInit: false, PerRow: false),
        new("bert-prefix-tuning", TinyBertModel, TinyBertInput, () => new PrefixTuningConfig { NumVirtualTokens = 3 }, CanMerge: false, IdentityAtInit: false, PerRow: false),
        new("bert-prefix-tuning-mlp", TinyBertModel, TinyBertInput, () => new PrefixTuningConfig { NumVirtualTokens = 2, PrefixProjection = true, EncoderHiddenSize = 8 },
            CanMerge: false, IdentityAtInit: false, PerRow: false),
        // The same methods on a decoder: LoRA and (IA)³ on Llama's module names, a prompt and a prefix on the causal model.
        new("gpt-lora", TinyGptModel, TinyGptInput, () => new LoraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 2, LoraAlpha = 4 }),
        new("gpt-ia3", TinyGptModel, TinyGptInput, () => new IA3Config { TargetModules = ["k_proj", "v_proj", "down_proj"], FeedforwardModules = ["down_proj"] }),
        new("gpt-prompt-tuning", TinyGptModel, TinyGptInput, () => new PromptTuningConfig { NumVirtualTokens = 3, PromptTuningInit = PromptTuningInit.SampleVocab },
            CanMerge: false, IdentityAtInit: false, PerRow: false),
        new("gpt-prefix-tuning", TinyGptModel, TinyGptInput, () => new PrefixTuningConfig { NumVirtualTokens = 3 }, CanMerge: false, IdentityAtInit: false, PerRow: false),
        // Compositions over frozen source adapters (added and perturbed first): only the composition trains.
        new("block-scalearn", Block, BlockInput, () => new ScaLearnConfig { TargetModules = ["fc2"], SourceAdapters = ["src0", "src1"] },
            CanMerge: false, IdentityAtInit: false, Sources: [("src0", FfnBottleneck), ("src1", FfnBottleneck)]),
        new("mlp-scalearn-scalar-over-lora", MlpModel, MlpInput, () => new ScaLearnConfig { TargetModules = ["lin0", "lin1"], SourceAdapters = ["src0", "src1"], Kind = ScaLearnKind.Scalar },
            CanMerge: false, IdentityAtInit: false, Sources: [("src0", MlpLora), ("src1", MlpLora)]),
        new("bert-scalearn-plus-plus", TinyBertModel, TinyBertInput, () => new ScaLearnConfig
        {
            TargetModules = TargetModules.Regex(BottleneckConfig.PfeifferTargets), SourceAdapters = ["src0", "src1"], Kind = ScaLearnKind.SharedVector,
        }, CanMerge: false, IdentityAtInit: false, Sources: [("src0", BertPfeiffer), ("src1", BertPfeiffer)]),
        new("block-adapter-fusion", Block, BlockInput, () => new AdapterFusionConfig { TargetModules = ["fc2"], SourceAdapters = ["src0", "src1"] },
            CanMerge: false, IdentityAtInit: false, Sources: [("src0", FfnBottleneck), ("src1", FfnBottleneck)]),
        new("bert-compacter-plus-plus", TinyBertModel, TinyBertInput, () => BottleneckConfig.CompacterPlusPlus() with { BottleneckSize = 4, PhmDim = 2, PhmInitRange = 0.05 }, CanMerge: false, Method: "compacter++"),

        // AdaLoRA (rank allocation during training)
        new("mlp-adalora", MlpModel, MlpInput, () => new AdaLoraConfig { TargetModules = ["lin0", "lin1"], InitR = 4, TargetR = 2, TotalStep = 10, LoraAlpha = 8 }),
        new("block-adalora-dropout", Block, BlockInput, () => new AdaLoraConfig
        {
            TargetModules = ["q", "v", "fc1", "fc2"], InitR = 3, TargetR = 1, TotalStep = 20, Tinit = 2, Tfinal = 5, LoraDropout = 0.1,
        }),
        // IncreLoRA (rank added during training; the reserved triplet of advance learning is made when training starts)
        new("mlp-increlora", MlpModel, MlpInput, () => new IncreLoraConfig { TargetModules = ["lin0", "lin1"], InitR = 2, TargetR = 4, DeltaT = 2, TopH = 1, LoraAlpha = 8 }),
        new("block-increlora-dropout", Block, BlockInput, () => new IncreLoraConfig
        {
            TargetModules = ["q", "v", "fc1", "fc2"], InitR = 1, TargetR = 3, Tinit = 1, DeltaT = 2, TopH = 2, LoraDropout = 0.1, AdvanceLearn = false,
        }),
        // The decomposition family: adapters initialised from a decomposition of W (SVD, LU), exactly the identity at init,
        // and Hydra's parallel + sequential branches.
        new("mlp-sorsa", MlpModel, MlpInput, () => new SorsaConfig { TargetModules = ["lin0", "lin1"], R = 4 }),
        new("block-sorsa", Block, BlockInput, () => new SorsaConfig { TargetModules = ["q", "v", "fc1"], R = 2 }),
        new("mlp-svfit-energy", MlpModel, MlpInput, () => new SvfitConfig { TargetModules = ["lin0", "lin1"], EnergyThreshold = 0.8 }),
        new("block-svfit-rank", Block, BlockInput, () => new SvfitConfig { TargetModules = BlockTargets, R = 3 }),
        new("mlp-loldu", MlpModel, MlpInput, () => new LolduConfig { TargetModules = ["lin0", "lin1"], R = 4 }),
        new("block-loldu", Block, BlockInput, () => new LolduConfig { TargetModules = BlockTargets, R = 2 }),
        new("mlp-hydra", MlpModel, MlpInput, () => new HydraConfig { TargetModules = ["lin0", "lin1"], R = 4, Alpha = 8 }),
        new("block-hydra-sequential", Block, BlockInput, () => new HydraConfig { TargetModules = ["q", "fc1", "fc2"], R = 2, Branches = "sequential" }),
        new("gpt-hydra", TinyGptModel, TinyGptInput, () => new HydraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 2 }),
        new("mlp-soka-energy", MlpModel, MlpInput, () => new SokaConfig { TargetModules = ["lin0", "lin1"], EnergyThreshold = 0.6 }),
        new("block-soka-elbow-grid", Block, BlockInput, () => new SokaConfig { TargetModules = ["q", "fc1", "fc2"], TermSelection = "elbow", GridRows = 2, GridCols = 4 }),
        new("mlp-soka-terms", MlpModel, MlpInput, () => new SokaConfig { TargetModules = ["lin1"], KroneckerTerms = 3 }),
        new("mlp-transformed-lora", MlpModel, MlpInput, () => new TransformedLoraConfig { TargetModules = ["lin0", "lin1"], R = 2, TtRank = 2 }),
        new("block-transformed-lora", Block, BlockInput, () => new TransformedLoraConfig { TargetModules = ["q", "fc2"], R = 2, LoraAlpha = 4, TtRank = 1 }),
        new("mlp-corda-ipm", MlpModel, MlpInput, () => new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Corda, CordaConfig = new() },
            ChangesBase: true, Method: "corda", Calibrate: m => CalibrateOn(m, MlpInput)),
        new("block-corda-kpm", Block, BlockInput, () => new LoraConfig { TargetModules = ["q", "v", "fc1"], R = 2, InitLoraWeights = LoraInit.Corda, CordaConfig = new() { CordaMethod = "kpm" } },
            ChangesBase: true, Method: "corda-kpm", Calibrate: m => CalibrateOn(m, BlockInput)),

        // SPT (sensitivity-aware allocation from calibration gradients): LoRA where many entries are sensitive, a sparse delta elsewhere.
        new("mlp-spt", MlpModel, MlpInput, () => new SptConfig { TargetModules = ["lin0", "lin1"], SensitiveEntries = 100, StructuredThreshold = 60, R = 2 },
            Calibrate: SquaredOutputCalibration(MlpInput), Second: () => new SptConfig
            {
                TargetModules = ["lin0", "lin1"], SensitiveEntries = 100, R = 2, LoraModules = ["lin1"],
                SparsePattern = new Dictionary<string, int> { ["lin0"] = 3 }, SparseEntries = new Dictionary<string, long[]> { ["lin0"] = [0, 17, 300] },
            }),
        new("block-spt", Block, BlockInput, () => new SptConfig { TargetModules = BlockTargets, SensitiveEntries = 60, R = 2 },
            Calibrate: SquaredOutputCalibration(BlockInput), Second: () => new SptConfig
            {
                TargetModules = BlockTargets, SensitiveEntries = 400, R = 2, LoraModules = ["mlp.fc1"],
                SparsePattern = new Dictionary<string, int> { ["attn.q"] = 2, ["attn.k"] = 0, ["attn.v"] = 1, ["attn.o"] = 1, ["mlp.fc2"] = 2 },
                SparseEntries = new Dictionary<string, long[]> { ["attn.q"] = [1, 200], ["attn.k"] = [], ["attn.v"] = [5], ["attn.o"] = [255], ["mlp.fc2"] = [0, 511] },
            }),
        // Routing (Poly / MHR): one task (PEFT's default n_tasks = 1), so rows need no task ids here; the multi-task
        // behaviours (per-row task ids, routing) are in PolyTests. Mixing per task cannot fold into one weight.
        new("mlp-poly", MlpModel, MlpInput, () => new PolyConfig { TargetModules = ["lin0", "lin1"], R = 4, NSkills = 3 }, CanMerge: false),
        new("block-mhr", Block, BlockInput, () => new PolyConfig { TargetModules = ["q", "v", "fc1"], R = 2, NSkills = 3, NSplits = 4 }, CanMerge: false),
        // Three tasks, each row's task id taken from the row itself (TaskRouted), so every behaviour sees several tasks.
        new("tasks-mlp-poly", TaskRoutedMlp, MlpInput, () => new PolyConfig { TargetModules = ["lin0", "lin1"], R = 2, NTasks = 3, NSkills = 2 }, CanMerge: false),
        new("tasks-mlp-mtlora", TaskRoutedMlp, MlpInput, () => new MtLoraConfig { TargetModules = ["lin0", "lin1"], R = 4, TaskR = 2, NTasks = 3 }, CanMerge: false),
        new("tasks-block-mtlora", () => new TaskRouted(Block(), 2), BlockInput, () => new MtLoraConfig { TargetModules = ["q", "v", "fc2"], R = 2, NTasks = 2, SharedScale = 2 }, CanMerge: false),
        // MoLA: a mixture of LoRA experts per layer, top-k routing; on the GPT, 4 experts in layer 0 and 2 in layer 1.
        new("mlp-mola", MlpModel, MlpInput, () => new MolaConfig { TargetModules = ["lin0", "lin1"], R = 2, NumExperts = 3, TopK = 2 }, CanMerge: false),
        new("gpt-mola-triangle", TinyGptModel, TinyGptInput, () => new MolaConfig { TargetModules = ["q_proj", "down_proj"], R = 2, NumExperts = 3, TopK = 2, ExpertAllocation = "triangle" }, CanMerge: false),
        // Earth-Adapter: frequency experts over the sequence (5 tokens, no [CLS]: a 1-D spectrum), soft router.
        new("block-earth-adapter", Block, BlockInput, () => new EarthAdapterConfig { TargetModules = ["o", "fc2"], Dim = 4, ClsToken = false }, CanMerge: false),
    ];

    /// <summary>A calibration action: <paramref name="batches"/> batches from the row's input, each loss mean(y²)
    /// backpropagated on its own (seeded, so every call sees the same data).</summary>
    static Func<Module, Action> SquaredOutputCalibration(Func<Tensor> input, int batches = 3) => model => () =>
    {
        manual_seed(23);
        for (int b = 0; b < batches; b++)
        {
            using var scope = NewDisposeScope();
            ((Module<Tensor, Tensor>)model).call(input()).square().mean().backward();
        }
    };

    static Module<Tensor, Tensor> TaskRoutedMlp() => new TaskRouted(new Mlp(), 3);

    public static IEnumerable<object[]> Names => Cases.Select(c => new object[] { c.Name });

    public static IEnumerable<object[]> Mergeable => Cases.Where(c => c.CanMerge).Select(c => new object[] { c.Name });

    public static IEnumerable<object[]> NotMergeable => Cases.Where(c => !c.CanMerge).Select(c => new object[] { c.Name });

    public static IEnumerable<object[]> IdentityAtInit => Cases.Where(c => c.IdentityAtInit).Select(c => new object[] { c.Name });

    public static IEnumerable<object[]> PerRow => Cases.Where(c => c.PerRow).Select(c => new object[] { c.Name });

    public static IEnumerable<object[]> NotPerRow => Cases.Where(c => !c.PerRow).Select(c => new object[] { c.Name });

    public static MatrixCase Get(string name) => Cases.Single(c => c.Name == name);
}

/// <summary>A two-layer BERT (16 wide, vocabulary 50, no dropout) from token ids through a Linear <c>head</c> (so a loss
/// such as mean(y²) is not flattened by the final LayerNorm), for the matrix: Hugging Face module names, residual
/// sublayer contexts, prompt and prefix hooks.</summary>
public sealed class TinyBert : Module<Tensor, Tensor>, IHasOutputHead
{
    public const int Vocabulary = 50;

    readonly BertModel bert;
    readonly Module<Tensor, Tensor> head;

    public TinyBert() : base(nameof(TinyBert))
    {
        bert = new BertModel(new BertConfig
        {
            VocabSize = Vocabulary, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32,
            MaxPositionEmbeddings = 32, HiddenDropoutProb = 0, AttentionProbsDropoutProb = 0, AddPoolingLayer = false,
        });
        head = Linear(16, 8);
        RegisterComponents();
    }

    public BertModel Bert => bert;

    public string? OutputHeadPath => "head";

    public override Tensor forward(Tensor inputIds)                                         // (B, T) → (B, T, 8)
    {
        using var scope = NewDisposeScope();
        return head.call(bert.call(inputIds, null, null)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A model that runs <c>inner</c> with a task id per row in force (for the multi-task rows of the matrix): the id of a row
/// is a function of the row's own values, so a row run alone keeps the task it had in the batch. Any context already in
/// force (per-row adapter names) is kept, with the task ids added.
/// </summary>
public sealed class TaskRouted : Module<Tensor, Tensor>
{
    readonly Module<Tensor, Tensor> inner;
    readonly int _tasks;

    public TaskRouted(Module<Tensor, Tensor> inner, int tasks) : base(nameof(TaskRouted))
    {
        this.inner = inner;
        _tasks = tasks;
        RegisterComponents();
    }

    /// <summary>Task of each row: ⌊1000·|Σ row|⌋ mod tasks.</summary>
    public int[] TaskIds(Tensor x)
    {
        using var sums = x.detach().reshape(x.shape[0], -1).to(ScalarType.Float64).sum(1).cpu();
        return sums.data<double>().ToArray().Select(s => (int)(Math.Floor(Math.Abs(s) * 1000) % _tasks)).ToArray();
    }

    public override Tensor forward(Tensor x)
    {
        var layers = inner.modules().OfType<AdapterLayer>().ToList();
        var previous = layers.Select(l => l.Context).ToList();
        var context = new ForwardContext { TaskIds = TaskIds(x), AdapterNames = previous.FirstOrDefault()?.AdapterNames };
        foreach (var layer in layers) layer.Context = context;
        try
        {
            return inner.call(x);
        }
        finally
        {
            for (int i = 0; i < layers.Count; i++) layers[i].Context = previous[i];
        }
    }
}

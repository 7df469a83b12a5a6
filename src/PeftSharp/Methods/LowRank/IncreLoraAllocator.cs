using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// IncreLoRA's incremental allocation (Zhang et al. 2023, §3) for one adapter of a <see cref="PeftModel"/>:
/// <list type="bullet">
/// <item>importance of every entry of the triplets in use, as AdaLoRA's: I = |p · ∇p|, sensitivity
/// Ī ← β₁Ī + (1 − β₁)I, uncertainty Ū ← β₂Ū + (1 − β₂)|I − Ī|, score s = Ī · Ū; a triplet's score is its λ entry's
/// score plus the mean over its row of Q and its column of P; a <em>module's</em> score is the mean of its triplets'
/// scores (the paper's S = (1/r) Σᵢ S(pᵢ, λᵢ, qᵢ)). A triplet added during training starts with zero statistics;</item>
/// <item>growth: at every step t &gt; tinit with t mod deltaT = 0 (0-based, as AdaLoRA's <c>global_step</c>), while
/// the total rank is below the target, the min(top_h, target − total) modules of highest score get one rank-1 triplet
/// each (<see cref="IncreLoraLinearAdapter.Grow"/>: λ = 0, so the function is unchanged; with advance learning the
/// triplet's p and q were already shaped by the regulariser);</item>
/// <item>restart warm-up: an added triplet's new parameters train at k / warmup_steps of the learning rate in their
/// k-th step (<see cref="Trainer.ScaleLearningRate"/>), then at the full rate;</item>
/// <item>the orthogonality regulariser γ·(Σ ‖QQᵀ − I‖_F + ‖PᵀP − I‖_F) / (2 × targets), over all triplets of a module
/// and its reserve, as a loss term.</item>
/// </list>
/// Differences from the official code, on purpose: it scores a module by |ΔW ⊙ ∇ΔW| of the whole product (a backward
/// hook) where the paper and this class average the triplets' AdaLoRA scores; it divides the update by the current rank
/// (so a growth rescales the existing triplets) where this class keeps α / init_r (a growth leaves the function as it
/// was); its reserved λ is 1e-5 where this class keeps it at exactly 0.
/// <para>Optimizer state: growing adds parameters and replaces none, so the moments of everything that trained keep
/// going; the trainer re-reads its trainable set before each step and starts the new parameters from zero moments.</para>
/// </summary>
public sealed class IncreLoraAllocator : IRankAllocationRecorder, IDisposable
{
    readonly PeftModel _peft;
    readonly List<(string Path, IncreLoraLinearAdapter Adapter)> _targets;
    readonly ImportanceStatistics _importance;
    readonly List<(Parameter Parameter, int AddedAfterStep)> _warming = [];
    Trainer? _trainer;
    RankAllocation _allocation;

    IncreLoraAllocator(PeftModel peft, string adapterName)
    {
        _peft = peft;
        AdapterName = adapterName;
        _importance = new ImportanceStatistics(Config.Beta1, Config.Beta2);
        _targets = peft.Layers.Where(l => l.Contains(adapterName) && l[adapterName] is IncreLoraLinearAdapter)
            .Select(l => (l.Path, (IncreLoraLinearAdapter)l[adapterName])).ToList();
        if (_targets.Count == 0)
            throw new ArgumentException($"Adapter '{adapterName}' has no IncreLoRA layers to add rank to.", nameof(adapterName));
        InitialTotal = _targets.Sum(t => t.Adapter.Rank!.Value);
        TargetTotal = Config.TargetTotalFor(_targets.Count);
        if (TargetTotal < InitialTotal)
            throw new ArgumentException($"The target total rank ({TargetTotal}) is below the total the adapter starts with ({InitialTotal} over {_targets.Count} targets); " +
                                        "IncreLoRA only adds rank: raise target_r / target_total_rank.", nameof(adapterName));
        bool trains = _targets.Any(t => t.Adapter.parameters().Any(p => p.requires_grad));
        if (Config.AdvanceLearn)
            foreach (var (_, adapter) in _targets) adapter.EnsureReserve(trains);
        var ranks = Ranks();
        _allocation = new RankAllocation(adapterName, _targets.Select(t => t.Path).ToList(), ranks, [new RankSnapshot(0, ranks)]);
    }

    /// <summary>The allocator of IncreLoRA adapter <paramref name="adapterName"/>: one per adapter, made on first use and
    /// kept with the model (statistics and growth carry over from one <c>Fit</c> to the next).</summary>
    public static IncreLoraAllocator For(PeftModel peft, string adapterName = PeftModel.DefaultAdapterName)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (peft.Config(adapterName) is not IncreLoraConfig)
            throw new ArgumentException($"Adapter '{adapterName}' is {peft.Config(adapterName).MethodName}, not increlora; incremental allocation belongs to IncreLoRA adapters.", nameof(adapterName));
        return peft.MethodState(adapterName, () => new IncreLoraAllocator(peft, adapterName));
    }

    /// <summary>The allocator of <paramref name="adapterName"/> if one was made, else null.</summary>
    public static IncreLoraAllocator? Find(PeftModel peft, string adapterName) => peft.FindMethodState<IncreLoraAllocator>(adapterName);

    public string AdapterName { get; }

    /// <summary>The adapter's config as it is now (its rank_pattern follows the growth).</summary>
    public IncreLoraConfig Config => (IncreLoraConfig)_peft.Config(AdapterName);

    /// <summary>The total rank over all targets when the allocator was made.</summary>
    public int InitialTotal { get; }

    /// <summary>The total rank growth stops at (target_total_rank, or target_r × targets).</summary>
    public int TargetTotal { get; }

    /// <summary>The total rank now.</summary>
    public int Total => _targets.Sum(t => t.Adapter.Rank!.Value);

    /// <summary>The 0-based step the next <see cref="UpdateAndGrow()"/> call stands for.</summary>
    public int NextStep { get; private set; }

    /// <summary>Record a snapshot of the ranks every this many steps (and at every growth).</summary>
    public int SnapshotEvery { get; set; } = 10;

    public RankAllocation Allocation => _allocation;

    /// <summary>The target paths, in the order of <see cref="ModuleScores"/>.</summary>
    public IReadOnlyList<string> Paths => _targets.Select(t => t.Path).ToList();

    int[] Ranks() => _targets.Select(t => t.Adapter.Rank!.Value).ToArray();

    /// <summary>Whether step <paramref name="step"/> (0-based) grows, given the total then.</summary>
    public bool GrowsAt(int step) => step > Config.Tinit && step % Config.DeltaT == 0 && Total < TargetTotal;

    /// <summary>After the optimizer step of 0-based step <paramref name="globalStep"/> (gradients still there): update the
    /// importance; on a growth step add triplets to the top modules. Returns the paths that grew (empty if none).</summary>
    public IReadOnlyList<string> UpdateAndGrow(int globalStep)
    {
        var grown = new List<string>();
        if (Total < TargetTotal)
        {
            UpdateImportance();
            if (GrowsAt(globalStep)) grown = GrowTop(Math.Min(Config.TopH, TargetTotal - Total));
        }
        NextStep = globalStep + 1;
        if (grown.Count > 0 || NextStep % SnapshotEvery == 0)
            _allocation = _allocation.WithSnapshot(NextStep, Ranks());
        return grown;
    }

    /// <summary><see cref="UpdateAndGrow(int)"/> for <see cref="NextStep"/>.</summary>
    public IReadOnlyList<string> UpdateAndGrow() => UpdateAndGrow(NextStep);

    /// <summary>Ī and Ū of every entry of the triplets in use from their current gradients (AdaLoRA's eq. 9–10).</summary>
    public void UpdateImportance() =>
        _importance.Update(_targets.SelectMany(t => t.Adapter.Blocks.SelectMany(block => new[] { block.E, block.A, block.B })));

    // s = Ī · Ū per entry (zeros before any update: a triplet just added).
    Tensor Score(Parameter p) => _importance.Score(p);

    /// <summary>Each triplet's score [r] of <paramref name="adapter"/>: s(λᵢ) + mean_j s(Q_ij) + mean_k s(P_ki).</summary>
    public Tensor TripletScores(IncreLoraLinearAdapter adapter)
    {
        using var _ = no_grad();
        return cat(adapter.Blocks.Select(t =>
            Score(t.E).view(-1) + Score(t.A).mean([1]) + Score(t.B).mean([0])).ToList(), 0);
    }

    /// <summary>Each module's score, the mean of its triplets' scores, in the order of <see cref="Paths"/>.</summary>
    public double[] ModuleScores()
    {
        using var scope = NewDisposeScope();
        return _targets.Select(t => TripletScores(t.Adapter).mean().ToDouble()).ToArray();
    }

    /// <summary>Adds one triplet to each of the <paramref name="count"/> modules of highest <see cref="ModuleScores"/>
    /// (ties: the earlier module), writes the new ranks into the config's rank_pattern and starts the new parameters'
    /// warm-up; returns the paths that grew, in model order. <see cref="UpdateAndGrow(int)"/> calls it on growth steps.</summary>
    public List<string> GrowTop(int count)
    {
        if (count < 1 || count > _targets.Count)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"A growth adds one triplet to each of 1 to {_targets.Count} modules (the targets).");
        var scores = ModuleScores();
        var chosen = Enumerable.Range(0, _targets.Count).OrderByDescending(i => scores[i]).ThenBy(i => i).Take(count).Order().ToList();
        var grown = new List<string>();
        foreach (int i in chosen)
        {
            var (path, adapter) = _targets[i];
            var (a, e, b) = adapter.Grow(trains: true);
            // With advance learning the added p and q were training already (their moments stay); λ is new. Without,
            // all three are new. Only what is new warms up.
            foreach (var p in Config.AdvanceLearn ? [e] : new[] { e, a, b }) StartWarmup(p);
            grown.Add(path);
        }
        _peft.ReplaceConfig(AdapterName, Config with { RankPattern = _targets.ToDictionary(t => t.Path, t => t.Adapter.Rank!.Value) });
        return grown;
    }

    void StartWarmup(Parameter p)
    {
        if (Config.WarmupSteps <= 0 || _trainer is null) return;
        _warming.Add((p, NextStep));
        _trainer.ScaleLearningRate(p, 1.0 / Config.WarmupSteps);
    }

    // Called after each step: the k-th update of an added parameter runs at k / warmup_steps of the rate.
    void AdvanceWarmup()
    {
        if (_trainer is null) return;
        for (int i = _warming.Count - 1; i >= 0; i--)
        {
            var (p, addedAt) = _warming[i];
            int updatesDone = NextStep - addedAt - 1;   // the step after the growth step is update 1
            if (updatesDone + 1 >= Config.WarmupSteps)
            {
                _trainer.RemoveLearningRateScale(p);
                _warming.RemoveAt(i);
            }
            else if (updatesDone >= 0) _trainer.ScaleLearningRate(p, (updatesDone + 1.0) / Config.WarmupSteps);
        }
    }

    /// <summary>γ · (Σ ‖QQᵀ − I‖_F + ‖PᵀP − I‖_F) / (2 × targets) over every triplet of each target and its reserve,
    /// with gradients, for the loss.</summary>
    public Tensor OrthogonalRegularizer()
    {
        Tensor? sum = null;
        foreach (var (_, adapter) in _targets)
        {
            var blocks = adapter.Blocks.ToList();
            if (adapter.Reserve is { } reserve) blocks.Add(reserve);
            var a = cat(blocks.Select(t => (Tensor)t.A).ToList(), 0);   // [r + 1, in]
            var b = cat(blocks.Select(t => (Tensor)t.B).ToList(), 1);   // [out, r + 1]
            foreach (var covariance in new[] { a.matmul(a.t()), b.t().matmul(b) })
            {
                var norm = (covariance - eye(covariance.shape[0], dtype: a.dtype, device: a.device)).norm();
                sum = sum is null ? norm : sum + norm;
            }
        }
        return sum!.div(2 * _targets.Count).mul(Config.OrthRegWeight);
    }

    /// <summary>Adds the regulariser as the loss term "increlora_orth_reg" (unless orth_reg_weight is 0), and after every
    /// optimizer step of <paramref name="trainer"/>: the warm-up of added triplets, <see cref="UpdateAndGrow()"/>, and the
    /// ranks into the log. Dispose the result to take it all out again.</summary>
    public IDisposable Attach(Trainer trainer)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        string term = AdapterName == PeftModel.DefaultAdapterName ? "increlora_orth_reg" : $"increlora_orth_reg '{AdapterName}'";
        bool regularise = Config.OrthRegWeight > 0;
        if (regularise) trainer.AddLossTerm(term, OrthogonalRegularizer);
        _trainer = trainer;
        Action<TrainingStepContext> afterStep = context =>
        {
            UpdateAndGrow();
            AdvanceWarmup();
            context.RecordRanks(_allocation);
        };
        trainer.AfterStep += afterStep;
        return new OnDispose(() =>
        {
            trainer.AfterStep -= afterStep;
            if (regularise) trainer.RemoveLossTerm(term);
            foreach (var (p, _) in _warming) trainer.RemoveLearningRateScale(p);
            _warming.Clear();
            _trainer = null;
        });
    }


    public void Dispose() => _importance.Dispose();
}

using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Methods.LowRank;

/// <summary>
/// AdaLoRA's rank allocation (Zhang et al. 2023, §3.2–3.3), as PEFT 0.20's <c>RankAllocator</c> and
/// <c>AdaLoraModel.update_and_allocate</c> do it, for one adapter of a <see cref="PeftModel"/>:
/// <list type="bullet">
/// <item>importance of every entry of A, E, B: I = |p · ∇p|, sensitivity Ī ← β₁Ī + (1 − β₁)I (eq. 9), uncertainty
/// Ū ← β₂Ū + (1 − β₂)|I − Ī| (eq. 10), score s = Ī · Ū (eq. 11);</item>
/// <item>a triplet's score: its E entry's score plus the mean score of its row of A and of its column of B;</item>
/// <item>the budget b(t) (eq. 12): the initial total rank until <c>tinit</c>, then
/// b = ⌊(b₀ − b_T)(1 − (t − tinit)/(T − tfinal − tinit))³ + b_T⌋, b_T = target_r × targets, and b_T from
/// T − tfinal on;</item>
/// <item>every <c>deltaT</c> steps of the budget phase, E is set to 0 for the b₀ − b triplets of lowest score (all
/// modules compete); at step T − tfinal the mask is final (<c>rank_pattern</c>), the statistics are reset, and from then
/// on the mask is re-applied after every step.</item>
/// </list>
/// <see cref="Attach"/> wires it into a <see cref="Trainer"/>: the orthogonality regulariser
/// γ·mean(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F) (eq. 4) as a loss term, and <see cref="UpdateAndAllocate()"/> after each optimizer
/// step (where PEFT calls it: after backward and the step, before the next zero_grad, with the gradients still there).
/// <see cref="Trainer.Fit{TBatch}(PeftModel, Func{int, IReadOnlyList{TBatch}}, Func{TBatch, Tensor}, TrainerOptions, Func{IReadOnlyDictionary{string, double}}?, string?)"/>
/// does that by itself for an active AdaLoRA adapter. Every allocation updates the adapter's config
/// (<see cref="AdaLoraConfig.RankPattern"/>) so that a save writes the pruned ranks, and records a
/// <see cref="RankAllocation"/> snapshot (<see cref="Allocation"/>).
/// </summary>
public sealed class AdaLoraAllocator : IRankAllocationRecorder, IDisposable
{
    readonly PeftModel _peft;
    readonly List<(string Path, AdaLoraLinearAdapter Adapter)> _targets;
    readonly ImportanceStatistics _importance;
    RankAllocation _allocation;

    AdaLoraAllocator(PeftModel peft, string adapterName)
    {
        _peft = peft;
        AdapterName = adapterName;
        _importance = new ImportanceStatistics(Config.Beta1, Config.Beta2);
        _targets = peft.Layers.Where(l => l.Contains(adapterName) && l[adapterName] is AdaLoraLinearAdapter)
            .Select(l => (l.Path, (AdaLoraLinearAdapter)l[adapterName])).ToList();
        if (_targets.Count == 0)
            throw new ArgumentException($"Adapter '{adapterName}' has no AdaLoRA layers to allocate rank between.", nameof(adapterName));
        InitialBudget = _targets.Sum(t => t.Adapter.R);
        TargetBudget = Config.TargetR * _targets.Count;
        var ranks = _targets.Select(t => t.Adapter.Rank ?? t.Adapter.R).ToArray();
        _allocation = new RankAllocation(adapterName, _targets.Select(t => t.Path).ToList(), ranks, [new RankSnapshot(0, ranks)]);
    }

    /// <summary>The allocator of AdaLoRA adapter <paramref name="adapterName"/> of <paramref name="peft"/>: one per adapter,
    /// made on first use and kept with the model (its statistics carry over from one <c>Fit</c> to the next).</summary>
    public static AdaLoraAllocator For(PeftModel peft, string adapterName = PeftModel.DefaultAdapterName)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (peft.Config(adapterName) is not AdaLoraConfig)
            throw new ArgumentException($"Adapter '{adapterName}' is {peft.Config(adapterName).MethodName}, not adalora; rank allocation belongs to AdaLoRA adapters.", nameof(adapterName));
        return peft.MethodState(adapterName, () => new AdaLoraAllocator(peft, adapterName));
    }

    /// <summary>The allocator of <paramref name="adapterName"/> if one was made (training ran), else null.</summary>
    public static AdaLoraAllocator? Find(PeftModel peft, string adapterName) => peft.FindMethodState<AdaLoraAllocator>(adapterName);

    public string AdapterName { get; }

    /// <summary>The adapter's config as it is now (its rank_pattern follows the allocations).</summary>
    public AdaLoraConfig Config => (AdaLoraConfig)_peft.Config(AdapterName);

    /// <summary>b₀: the triplets of all targets at the start (PEFT's <c>init_bgt</c>).</summary>
    public int InitialBudget { get; }

    /// <summary>b_T = target_r × targets (PEFT's <c>target_bgt</c>).</summary>
    public int TargetBudget { get; }

    /// <summary>The global step the next <see cref="UpdateAndAllocate()"/> call stands for (0-based, PEFT's
    /// <c>global_step</c>).</summary>
    public int NextStep { get; private set; }

    /// <summary>Record a snapshot of the ranks every this many steps (and at every allocation that changes them).</summary>
    public int SnapshotEvery { get; set; } = 10;

    /// <summary>True when the adapter was loaded with fewer than init_r triplets in a layer (a file with a rank_pattern):
    /// nothing is left to allocate, so <see cref="UpdateAndAllocate(int)"/> does nothing.</summary>
    public bool IsPruned => _targets.Any(t => t.Adapter.R != Config.InitR);

    /// <summary>The ranks per target now and the snapshots recorded so far (layer × step).</summary>
    public RankAllocation Allocation => _allocation;

    /// <summary>The budget at <paramref name="step"/> (0-based) and whether that step masks (PEFT's
    /// <c>budget_schedule</c>, eq. 12).</summary>
    public (int Budget, bool Mask) BudgetSchedule(int step) => Schedule(step, InitialBudget, TargetBudget, Config);

    /// <summary>PEFT's <c>budget_schedule</c> for given budgets b₀ and b_T.</summary>
    public static (int Budget, bool Mask) Schedule(int step, int initialBudget, int targetBudget, AdaLoraConfig config)
    {
        int total = config.TotalStep ?? throw new InvalidOperationException("AdaLoRA needs total_step to lay out its budget schedule.");
        if (step <= config.Tinit) return (initialBudget, false);
        if (step > total - config.Tfinal) return (targetBudget, true);
        double remaining = 1 - (double)(step - config.Tinit) / (total - config.Tfinal - config.Tinit);
        return ((int)((initialBudget - targetBudget) * Math.Pow(remaining, 3) + targetBudget), step % config.DeltaT == 0);
    }

    /// <summary>PEFT's <c>update_and_allocate(global_step)</c> for the next step (<see cref="NextStep"/>); call it after
    /// the optimizer step and before the gradients are cleared.</summary>
    public void UpdateAndAllocate() => UpdateAndAllocate(NextStep);

    /// <summary>PEFT's <c>update_and_allocate(<paramref name="globalStep"/>)</c> (0-based): before T − tfinal, update the
    /// importance and mask to the budget on allocation steps; at T − tfinal, the final mask; after, re-apply it.</summary>
    public void UpdateAndAllocate(int globalStep)
    {
        // An adapter loaded from a pruned file (rank_pattern) holds only its kept triplets: its allocation is over, and
        // it trains at those ranks (PEFT's masks, init_r long, would not even fit its tensors).
        if (IsPruned) return;
        using var scope = NewDisposeScope();
        var config = Config;
        int end = (config.TotalStep ?? 0) - config.Tfinal;
        IReadOnlyDictionary<string, bool[]>? kept = null;
        if (globalStep < end)
        {
            UpdateImportance();
            var (budget, mask) = BudgetSchedule(globalStep);
            if (mask) kept = MaskToBudget(budget);
        }
        else if (globalStep == end)
        {
            kept = MaskToBudget(BudgetSchedule(globalStep).Budget);
            ResetImportance();
        }
        else MaskWithPattern();
        if (kept is not null) Publish(kept);
        NextStep = globalStep + 1;
        var ranks = _targets.Select(t => t.Adapter.Rank ?? t.Adapter.R).ToArray();
        if ((kept is not null && !ranks.SequenceEqual(_allocation.Ranks)) || NextStep % SnapshotEvery == 0 || globalStep == end)
            _allocation = _allocation.WithSnapshot(NextStep, ranks);
    }

    /// <summary>Ī and Ū of every entry of A, E and B from this step's gradients (PEFT's <c>update_ipt</c>, eq. 9–10).</summary>
    void UpdateImportance() => _importance.Update(_targets.SelectMany(t => new[] { t.Adapter.E, t.Adapter.A, t.Adapter.B }));

    /// <summary>s = Ī · Ū per entry of <paramref name="p"/> (PEFT's <c>_element_score</c>, eq. 11); zeros before any update.</summary>
    Tensor Score(Parameter p) => _importance.Score(p);

    /// <summary>Each triplet's score [r]: its E entry plus the mean over its row of A and its column of B
    /// (PEFT's <c>_combine_ipt</c>).</summary>
    public Tensor TripletScores(AdaLoraLinearAdapter adapter)
    {
        using var _ = no_grad();
        var a = Score(adapter.A).mean([1], keepdim: true);                 // [r, 1]
        var b = Score(adapter.B).mean([0], keepdim: false).view(-1, 1);    // [r, 1]
        return Score(adapter.E).view(-1) + cat([a, b], 1).sum(1).view(-1);
    }

    /// <summary>Sets E to 0 for the b₀ − <paramref name="budget"/> triplets of lowest score over all targets (PEFT's
    /// <c>mask_to_budget</c>: a triplet goes when its score is at most the (b₀ − b)-th smallest). Returns the kept
    /// triplets per target path.</summary>
    Dictionary<string, bool[]> MaskToBudget(int budget)
    {
        using var _ = no_grad();
        var scores = _targets.Select(t => TripletScores(t.Adapter)).ToList();
        int k = InitialBudget - budget;
        // PEFT calls kthvalue(k) here, which has no answer for k = 0 (budget not below b₀): nothing is masked then.
        double threshold = k <= 0 ? double.NegativeInfinity : cat(scores, 0).kthvalue(k, 0, false).values.ToDouble();
        var kept = new Dictionary<string, bool[]>();
        for (int i = 0; i < _targets.Count; i++)
        {
            var drop = scores[i] <= threshold;
            _targets[i].Adapter.E.masked_fill_(drop.view(-1, 1), 0.0);
            kept[_targets[i].Path] = drop.logical_not().data<bool>().ToArray();
        }
        return kept;
    }

    /// <summary>Re-applies the final mask (PEFT's <c>mask_using_rank_pattern</c>).</summary>
    void MaskWithPattern()
    {
        using var _ = no_grad();
        foreach (var (path, adapter) in _targets)
            if (Config.KeptAt(path) is { } kept)
                adapter.E.masked_fill_(tensor(kept.Select(k => !k).ToArray(), device: adapter.E.device).view(-1, 1), 0.0);
    }

    void ResetImportance() => _importance.Reset();

    /// <summary>Writes the kept triplets into the adapters (what a save writes) and the config's rank_pattern (what it
    /// reloads with), as PEFT sets <c>peft_config.rank_pattern</c> at each allocation.</summary>
    void Publish(IReadOnlyDictionary<string, bool[]> kept)
    {
        foreach (var (path, adapter) in _targets) adapter.Kept = kept[path];
        _peft.ReplaceConfig(AdapterName, Config with
        {
            RankPattern = kept.ToDictionary(p => AdaLoraConfig.PatternKeyOf(p.Key), p => (IReadOnlyList<bool>)p.Value),
        });
    }

    /// <summary>PEFT's orthogonality regulariser (eq. 4, <c>AdaLoraModel.forward</c>):
    /// γ · (Σ ‖AAᵀ − I‖_F + ‖BᵀB − I‖_F) / (2 × targets), with gradients, for the loss.</summary>
    public Tensor OrthogonalRegularizer()
    {
        Tensor? sum = null;
        int count = 0;
        foreach (var (_, adapter) in _targets)
            foreach (var (p, isA) in new[] { (adapter.A, true), (adapter.B, false) })
            {
                var covariance = isA ? p.matmul(p.t()) : p.t().matmul(p);
                var norm = (covariance - eye(covariance.shape[0], dtype: p.dtype, device: p.device)).norm();
                sum = sum is null ? norm : sum + norm;
                count++;
            }
        return sum!.div(count).mul(Config.OrthRegWeight);
    }

    /// <summary>Adds the regulariser as the loss term "adalora_orth_reg" (unless orth_reg_weight is 0) and
    /// <see cref="UpdateAndAllocate()"/> after every optimizer step of <paramref name="trainer"/>; dispose the result to
    /// take both out again.</summary>
    public IDisposable Attach(Trainer trainer)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        string term = AdapterName == PeftModel.DefaultAdapterName ? "adalora_orth_reg" : $"adalora_orth_reg '{AdapterName}'";
        bool regularise = Config.OrthRegWeight > 0;
        if (regularise) trainer.AddLossTerm(term, OrthogonalRegularizer);
        Action<TrainingStepContext> afterStep = context =>
        {
            UpdateAndAllocate();
            context.RecordRanks(_allocation);
        };
        trainer.AfterStep += afterStep;
        return new OnDispose(() =>
        {
            trainer.AfterStep -= afterStep;
            if (regularise) trainer.RemoveLossTerm(term);
        });
    }


    public void Dispose() => ResetImportance();
}

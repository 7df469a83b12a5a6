using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>
/// <c>AddWeightedAdapter</c> against PEFT 0.20's formulas (<c>LoraModel.add_weighted_adapter</c> and
/// <c>utils/merge_utils.py</c>) computed directly here on the adapters' tensors, element by element in double precision;
/// DARE by its definition (its masks come from torch's RNG, which .NET cannot reproduce); and the merged adapter's file
/// against the files PEFT wrote (Fixtures/hf-peft-0.20).
/// </summary>
public sealed class WeightedMergeTests
{
    static readonly double[] Weights = [0.7, -0.4];

    /// <summary>An MLP with two random LoRAs: "a" (r 4, alpha 8) and "b" (r 4, alpha 4) on lin0 and lin1.</summary>
    static PeftModel TwoAdapters(int rankB = 4, string targetsB = "lin0,lin1")
    {
        manual_seed(3);
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random }, "a");
        peft.AddAdapter("b", new LoraConfig { TargetModules = TargetModules.Parse(targetsB), R = rankB, LoraAlpha = 4, InitLoraWeights = LoraInit.Random });
        return peft;
    }

    static LoraLinearAdapter Lora(PeftModel peft, string layer, string adapter) => (LoraLinearAdapter)peft.Layers.Single(l => l.Path == layer)[adapter];

    // ---- PEFT's merge_utils, written out on flat double arrays ----

    static double[] Flat(Tensor t) => t.detach().to(ScalarType.Float64).reshape(-1).data<double>().ToArray();

    static Tensor Shaped(double[] values, long[] shape) => tensor(values).reshape(shape);

    static double[] MagnitudePruned(double[] x, double density)
    {
        if (density >= 1) return x;
        int k = (int)(density * x.Length);
        var kept = Enumerable.Range(0, x.Length).OrderByDescending(i => Math.Abs(x[i])).Take(k).ToHashSet();
        return x.Select((v, i) => kept.Contains(i) ? v : 0).ToArray();
    }

    static double[] WeightedSum(IReadOnlyList<double[]> tasks, IReadOnlyList<double> w) =>
        Enumerable.Range(0, tasks[0].Length).Select(j => Enumerable.Range(0, tasks.Count).Sum(k => w[k] * tasks[k][j])).ToArray();

    static double[] TiesOf(IReadOnlyList<double[]> tasks, IReadOnlyList<double> w, double density, string method)
    {
        var pruned = tasks.Select(t => MagnitudePruned(t, density)).ToList();
        var result = new double[tasks[0].Length];
        for (int j = 0; j < result.Length; j++)
        {
            double magnitude = method == "total" ? pruned.Sum(t => t[j]) : pruned.Sum(t => (double)Math.Sign(t[j]));
            int elected = magnitude >= 0 ? 1 : -1;
            var agree = Enumerable.Range(0, pruned.Count).Where(k => Math.Sign(pruned[k][j]) == elected).ToList();
            result[j] = agree.Sum(k => w[k] * pruned[k][j]) / Math.Max(agree.Count, 1);
        }
        return result;
    }

    static double[] Combined(string type, IReadOnlyList<double[]> tasks, IReadOnlyList<double> w, double density, string method = "total") => type switch
    {
        "linear" => WeightedSum(tasks, w),
        "magnitude_prune" => WeightedSum(tasks.Select(t => MagnitudePruned(t, density)).ToList(), w),
        "ties" => TiesOf(tasks, w, density, method),
        _ => throw new ArgumentException(type),
    };

    // PEFT passes its weights through torch.tensor(list of floats), i.e. float32.
    static double F32(double w) => (float)w;

    // ---- the factor-wise types: A and B each combined with sign(ws)·√|ws| and √|ws| ----

    [Theory]
    [InlineData("linear", 1.0, "total")]
    [InlineData("ties", 0.5, "total")]
    [InlineData("ties", 0.3, "frequency")]
    [InlineData("magnitude_prune", 0.4, "total")]
    public void Factor_wise_merges_combine_A_and_B_as_PEFTs_formula_says(string type, double density, string signMethod)
    {
        var peft = TwoAdapters();
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", type, density: density, majoritySignMethod: signMethod);
        Assert.Equal(4, config.R);
        Assert.Equal(4, config.LoraAlpha);
        foreach (var layer in new[] { "lin0", "lin1" })
        {
            var (a, b, m) = (Lora(peft, layer, "a"), Lora(peft, layer, "b"), Lora(peft, layer, "m"));
            var ws = new[] { Weights[0] * a.Scaling, Weights[1] * b.Scaling };
            var weightsA = ws.Select(w => F32(Math.Sqrt(Math.Abs(w)) * Math.Sign(w))).ToList();
            var weightsB = ws.Select(w => F32(Math.Sqrt(Math.Abs(w)))).ToList();
            var expectedA = Combined(type, [Flat(a.A), Flat(b.A)], weightsA, density, signMethod);
            var expectedB = Combined(type, [Flat(a.B), Flat(b.B)], weightsB, density, signMethod);
            Tensors.AssertClose(Shaped(expectedA, a.A.shape), m.A, 1e-6, $"{type} lora_A of {layer}");
            Tensors.AssertClose(Shaped(expectedB, a.B.shape), m.B, 1e-6, $"{type} lora_B of {layer}");
            Assert.Equal(1.0, m.Scaling);
        }
    }

    [Fact]
    public void Cat_stacks_the_weighted_As_and_the_Bs_so_the_delta_is_the_weighted_sum_of_the_adapters_deltas()
    {
        var peft = TwoAdapters(rankB: 2);
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", "cat");
        Assert.Equal(6, config.R);
        Assert.Equal(6, config.LoraAlpha);
        foreach (var layer in new[] { "lin0", "lin1" })
        {
            var (a, b, m) = (Lora(peft, layer, "a"), Lora(peft, layer, "b"), Lora(peft, layer, "m"));
            Tensors.AssertClose(cat([a.A * Weights[0] * a.Scaling, b.A * Weights[1] * b.Scaling], 0), m.A, 1e-7, $"cat lora_A of {layer}");
            Tensors.AssertClose(cat([a.B, b.B], 1), m.B, 0, $"cat lora_B of {layer}");
            using var deltas = (a.DeltaWeight(null!) * Weights[0] + b.DeltaWeight(null!) * Weights[1]);
            Tensors.AssertClose(deltas, m.DeltaWeight(null!), 1e-5, $"cat delta of {layer}");
        }
    }

    [Fact]
    public void Cat_pads_a_layer_that_only_some_adapters_hold_with_zeros_to_the_summed_rank()
    {
        var peft = TwoAdapters(rankB: 2, targetsB: "lin1");
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", "cat");
        Assert.Equal(["lin0", "lin1"], config.TargetModules!.Names);
        var (a, m) = (Lora(peft, "lin0", "a"), Lora(peft, "lin0", "m"));
        Assert.Equal([6L, 16L], m.A.shape);
        Tensors.AssertClose(a.A * Weights[0] * a.Scaling, m.A[..4], 1e-7, "lin0 rows of a");
        Assert.Equal(0, m.A[4..].abs().sum().item<float>());
        Tensors.AssertClose(a.DeltaWeight(null!) * Weights[0], m.DeltaWeight(null!), 1e-5, "lin0 delta");
    }

    // ---- the svd types: the full deltas combined with weights w·s, then the best rank-r factorisation ----

    [Theory]
    [InlineData("svd", 1.0, null)]
    [InlineData("svd", 1.0, 2)]
    [InlineData("ties_svd", 0.5, null)]
    [InlineData("magnitude_prune_svd", 0.3, 3)]
    public void Svd_merges_truncate_PEFTs_combined_delta_to_the_svd_rank(string type, double density, int? svdRank)
    {
        var peft = TwoAdapters();
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", type, svdRank: svdRank, density: density);
        int rank = svdRank ?? 4;
        Assert.Equal(rank, config.R);
        Assert.Equal(rank, config.LoraAlpha);
        foreach (var layer in new[] { "lin0", "lin1" })
        {
            var (a, b, m) = (Lora(peft, layer, "a"), Lora(peft, layer, "b"), Lora(peft, layer, "m"));
            var ws = new[] { F32(Weights[0] * a.Scaling), F32(Weights[1] * b.Scaling) };
            // get_delta_weight already holds s; PEFT weighs it by w·s again.
            using var deltaA = a.DeltaWeight(null!);
            using var deltaB = b.DeltaWeight(null!);
            var combined = Shaped(Combined(type[..type.IndexOf("svd")].TrimEnd('_') is { Length: > 0 } inner ? inner : "linear",
                                           [Flat(deltaA), Flat(deltaB)], ws, density), deltaA.shape);
            var (u, s, vh) = linalg.svd(combined, fullMatrices: false);
            var expected = u[.., ..rank].matmul(diag(s[..rank])).matmul(vh[..rank]);
            Assert.Equal([(long)rank, a.A.shape[1]], m.A.shape);
            Tensors.AssertClose(expected, m.B.matmul(m.A), 2e-5, $"{type} rank-{rank} delta of {layer}");
        }
    }

    [Fact]
    public void Svd_clamp_limits_both_factors_to_the_quantile_of_their_entries()
    {
        var peft = TwoAdapters();
        peft.AddWeightedAdapter(["a", "b"], Weights, "plain", "svd");
        peft.AddWeightedAdapter(["a", "b"], Weights, "clamped", "svd", svdClamp: 0.8);
        foreach (var layer in new[] { "lin0", "lin1" })
        {
            var (plain, clamped) = (Lora(peft, layer, "plain"), Lora(peft, layer, "clamped"));
            // torch.quantile with linear interpolation, over U diag(S) and Vh flattened together.
            var entries = Flat(plain.B).Concat(Flat(plain.A)).Order().ToArray();
            double position = 0.8 * (entries.Length - 1);
            int below = (int)Math.Floor(position);
            double high = entries[below] + (position - below) * (entries[Math.Min(below + 1, entries.Length - 1)] - entries[below]);
            Tensors.AssertClose(plain.B.clamp(-high, high), clamped.B, 1e-6, $"clamped lora_B of {layer}");
            Tensors.AssertClose(plain.A.clamp(-high, high), clamped.A, 1e-6, $"clamped lora_A of {layer}");
            Assert.True(plain.B.abs().max().item<float>() > high, "the clamp should cut something here");
        }
    }

    [Fact]
    public void An_svd_rank_above_the_layers_size_is_padded_with_zero_components()
    {
        var peft = TwoAdapters();
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", "svd", svdRank: 20);
        Assert.Equal(20, config.R);
        var m = Lora(peft, "lin0", "m");                     // lin0 is 16 -> 32: at most 16 components
        Assert.Equal([20L, 16L], m.A.shape);
        Assert.Equal(0, m.A[16..].abs().sum().item<float>());
        var (a, b) = (Lora(peft, "lin0", "a"), Lora(peft, "lin0", "b"));
        using var expected = a.DeltaWeight(null!) * F32(Weights[0] * a.Scaling) + b.DeltaWeight(null!) * F32(Weights[1] * b.Scaling);
        Tensors.AssertClose(expected, m.DeltaWeight(null!), 2e-5, "full-rank svd delta");
    }

    // ---- DARE: random masks, tested by definition ----

    [Fact]
    public void Dare_keeps_about_a_density_fraction_of_the_values_and_rescales_them_by_one_over_density()
    {
        manual_seed(5);
        using var task = randn(200, 200);
        using var generator = new Generator(42);
        using var dropped = TaskMerging.DareLinear([task], tensor(new float[] { 1 }), 0.3, generator);
        using var kept = dropped.ne(0);
        double fraction = kept.to(ScalarType.Float64).mean().item<double>();
        Assert.InRange(fraction, 0.29, 0.31);   // 40 000 Bernoulli(0.3) draws: sd 0.0023
        Tensors.AssertClose(task.masked_select(kept) / 0.3, dropped.masked_select(kept), 1e-6, "kept values rescaled by 1/density");
    }

    [Fact]
    public void Dare_masks_are_drawn_per_task_in_order_and_are_repeatable_with_a_seed()
    {
        manual_seed(5);
        var tasks = new[] { randn(20, 10), randn(20, 10) };
        var w = tensor(new float[] { 0.6f, -0.9f });
        Tensor Masked(int seed) { using var g = new Generator((ulong)seed); return stack(tasks.Select(t => TaskMerging.RandomPruning(t, 0.5, rescale: true, g)).ToList(), 0); }

        using (var g = new Generator(7))
            Tensors.AssertClose(WeightedSumOf(Masked(7), w), TaskMerging.DareLinear(tasks, w, 0.5, g), 1e-6, "dare_linear = Σ w·DARE(t)");
        using (var g = new Generator(7))
        {
            var pruned = Masked(7);
            var expected = TiesOf([Flat(pruned[0]), Flat(pruned[1])], [F32(0.6), F32(-0.9)], 1.0, "total");
            Tensors.AssertClose(Shaped(expected, tasks[0].shape), TaskMerging.DareTies(tasks, w, 0.5, "total", g), 1e-6, "dare_ties = TIES on DARE(t)");
        }
        using var g1 = new Generator(7);
        using var g2 = new Generator(8);
        Tensors.AssertDifferent(TaskMerging.DareLinear(tasks, w, 0.5, g1), TaskMerging.DareLinear(tasks, w, 0.5, g2), "other seeds, other masks");

        static Tensor WeightedSumOf(Tensor stacked, Tensor w) => (stacked * w.view(-1, 1, 1)).sum(dim: 0);
    }

    [Theory]
    [InlineData("dare_linear", "linear")]
    [InlineData("dare_ties", "ties")]
    [InlineData("dare_linear_svd", "svd")]
    [InlineData("dare_ties_svd", "ties_svd")]
    public void Dare_merges_are_repeatable_with_a_seed_and_at_density_one_equal_their_deterministic_counterpart(string dare, string counterpart)
    {
        var peft = TwoAdapters();
        peft.AddWeightedAdapter(["a", "b"], Weights, "dense", dare, density: 1.0, seed: 1);
        peft.AddWeightedAdapter(["a", "b"], Weights, "reference", counterpart, density: 1.0);
        peft.AddWeightedAdapter(["a", "b"], Weights, "seeded1", dare, density: 0.5, seed: 11);
        peft.AddWeightedAdapter(["a", "b"], Weights, "seeded2", dare, density: 0.5, seed: 11);
        peft.AddWeightedAdapter(["a", "b"], Weights, "other", dare, density: 0.5, seed: 12);
        foreach (var layer in new[] { "lin0", "lin1" })
        {
            Tensors.AssertClose(Lora(peft, layer, "reference").DeltaWeight(null!), Lora(peft, layer, "dense").DeltaWeight(null!), 1e-6, $"{dare} at density 1 = {counterpart}");
            Tensors.AssertEqual(Lora(peft, layer, "seeded1").DeltaWeight(null!), Lora(peft, layer, "seeded2").DeltaWeight(null!), $"{dare} with one seed twice");
            Tensors.AssertDifferent(Lora(peft, layer, "seeded1").DeltaWeight(null!), Lora(peft, layer, "other").DeltaWeight(null!), $"{dare} with another seed");
        }
    }

    // ---- config, keys, and the rules around them ----

    [Fact]
    public void A_single_adapter_is_merged_linearly_whatever_the_type_asked_for_as_in_PEFT()
    {
        var peft = TwoAdapters();
        peft.AddWeightedAdapter(["a"], [-2.0], "m", "svd", svdRank: 1);
        var (a, m) = (Lora(peft, "lin1", "a"), Lora(peft, "lin1", "m"));
        Assert.Equal(4, m.R);
        Tensors.AssertClose(a.DeltaWeight(null!) * -2.0, m.DeltaWeight(null!), 1e-5, "single adapter, negative weight");
    }

    [Fact]
    public void A_merge_of_rslora_adapters_keeps_use_rslora_as_PEFT_does_so_its_scale_is_the_root_of_the_rank()
    {
        manual_seed(3);
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = 4, LoraAlpha = 8, UseRslora = true, InitLoraWeights = LoraInit.Random }, "a");
        peft.AddAdapter("b", new LoraConfig { TargetModules = ["lin0"], R = 4, LoraAlpha = 8, UseRslora = true, InitLoraWeights = LoraInit.Random });
        var config = peft.AddWeightedAdapter(["a", "b"], Weights, "m", "linear");
        Assert.True(config.UseRslora);
        Assert.Equal((4, 4.0), (config.R, config.LoraAlpha));
        Assert.Equal(2.0, Lora(peft, "lin0", "m").Scaling);   // 4 / √4, where a plain LoRA merge has 1
    }

    [Fact]
    public void Regex_targets_are_joined_as_alternatives_and_list_targets_as_a_sorted_union()
    {
        manual_seed(3);
        var peft = PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = TargetModules.Regex("lin0"), R = 2, InitLoraWeights = LoraInit.Random }, "a");
        peft.AddAdapter("b", new LoraConfig { TargetModules = TargetModules.Regex("lin1"), R = 2, InitLoraWeights = LoraInit.Random });
        Assert.Equal("(lin0)|(lin1)", peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "cat").TargetModules!.Pattern);
        Assert.Equal(["lin0", "lin1"], peft.Layers.Where(l => l.Contains("m")).Select(l => l.Path));

        var lists = TwoAdapters(targetsB: "lin1,lin0");
        lists.AddAdapter("c", new LoraConfig { TargetModules = ["head"], R = 4, LoraAlpha = 4, InitLoraWeights = LoraInit.Random });
        Assert.Equal(["head", "lin0", "lin1"], lists.AddWeightedAdapter(["b", "c", "a"], [1, 1, 1], "m", "linear").TargetModules!.Names);
    }

    [Fact]
    public void Bad_requests_are_refused_naming_what_is_wrong()
    {
        var peft = TwoAdapters(rankB: 2);
        void Refused(string expected, Action act) => Assert.Contains(expected, Assert.ThrowsAny<ArgumentException>(act).Message);
        Refused("Adapter 'zzz' does not exist", () => peft.AddWeightedAdapter(["a", "zzz"], [1, 1], "m", "cat"));
        Refused("one weight per adapter", () => peft.AddWeightedAdapter(["a", "b"], [1], "m", "cat"));
        Refused("Invalid combination_type 'mean'", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "mean"));
        Refused("same r value", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "linear"));
        Refused("give density", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "ties_svd"));
        Refused("density is the fraction", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "ties_svd", density: 1.5));
        Refused("majority_sign_method 'most'", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "ties_svd", density: 0.5, majoritySignMethod: "most"));
        Refused("svd_clamp is a quantile", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "m", "svd", svdClamp: 2));
        Refused("already exists", () => peft.AddWeightedAdapter(["a", "b"], [1, 1], "b", "cat"));
        Refused("Weights must be finite", () => peft.AddWeightedAdapter(["a", "b"], [1, double.NaN], "m", "cat"));

        var mixed = TwoAdapters();
        mixed.AddAdapter("r", new LoraConfig { TargetModules = TargetModules.Regex("lin0"), R = 4 });
        Refused("mix of list/set and string", () => mixed.AddWeightedAdapter(["a", "r"], [1, 1], "m", "cat"));
        mixed.AddAdapter("dora", new LoraConfig { TargetModules = ["lin0"], R = 4, UseDora = true });
        Refused("uses DoRA", () => mixed.AddWeightedAdapter(["a", "dora"], [1, 1], "m", "cat"));

        var saved = TwoAdapters();
        saved.AddAdapter("s1", new LoraConfig { TargetModules = ["lin0"], R = 4, ModulesToSave = ["head"] });
        saved.AddAdapter("s2", new LoraConfig { TargetModules = ["lin0"], R = 4, ModulesToSave = ["head"] });
        Refused("modules_to_save", () => saved.AddWeightedAdapter(["s1", "s2"], [1, 1], "m", "cat"));
        Assert.DoesNotContain("m", saved.AdapterNames);
    }

    [Theory]
    [InlineData("linear", 4)]
    [InlineData("cat", 8)]
    [InlineData("svd", 4)]
    public void A_merged_adapter_saves_with_exactly_PEFTs_config_fields_and_tensor_keys(string type, int rank)
    {
        // Two copies of the adapter PEFT wrote; PEFT's merged config is the first's with r = lora_alpha = the new rank.
        var fixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "hf-peft-0.20", "mlp_lora");
        var peft = PeftModel.Load(new Mlp(), fixture, "a");
        peft.LoadAdapter(fixture, "b");
        peft.AddWeightedAdapter(["a", "b"], [0.5, 0.5], "merged", type);
        var directory = TempDirectory.Create();
        peft.Save(directory, ["merged"]);

        var theirs = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(fixture, AdapterFiles.ConfigFileName)))!;
        theirs["r"] = rank;
        theirs["lora_alpha"] = rank;
        var ours = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, "merged", AdapterFiles.ConfigFileName)))!;
        Assert.Equal(theirs.Select(p => p.Key).Order(), ours.Select(p => p.Key).Order());
        foreach (var (key, value) in theirs.Where(p => p.Key != "auto_mapping"))
            Assert.True(JsonNode.DeepEquals(value, ours[key]), $"{key}: PEFT's merge gives {value?.ToJsonString()}, we wrote {ours[key]?.ToJsonString()}.");

        var theirKeys = SafeTensors.ReadHeader(Path.Combine(fixture, AdapterFiles.WeightsFileName));
        var ourKeys = SafeTensors.ReadHeader(Path.Combine(directory, "merged", AdapterFiles.WeightsFileName));
        Assert.Equal(theirKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Name.Contains("lora_A") ? new long[] { rank, t.Shape[1] } : new long[] { t.Shape[0], rank }))),
                     ourKeys.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))));

        // And it loads back as the same adapter.
        var reloaded = PeftModel.Load(new Mlp(), Path.Combine(directory, "merged"));
        foreach (var layer in new[] { "lin0", "lin1" })
            Tensors.AssertEqual(Lora(peft, layer, "merged").DeltaWeight(null!), Lora(reloaded, layer, "default").DeltaWeight(null!), $"reloaded {layer}");
    }

    [Fact]
    public void Merging_and_deleting_the_result_leaves_no_live_tensors()
    {
        var peft = TwoAdapters();
        void Cycle()
        {
            peft.AddWeightedAdapter(["a", "b"], Weights, "m1", "linear");
            peft.AddWeightedAdapter(["a", "b"], Weights, "m2", "cat");
            peft.AddWeightedAdapter(["a", "b"], Weights, "m3", "dare_ties_svd", density: 0.5, svdClamp: 0.9, seed: 3);
            foreach (var name in new[] { "m1", "m2", "m3" }) peft.DeleteAdapter(name);
        }
        Cycle();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Cycle();
        Cycle();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    /// <summary>An embedding followed by a projection, for LoRA on an Embedding.</summary>
    sealed class EmbeddingModel : Module<Tensor, Tensor>
    {
        readonly Module<Tensor, Tensor> emb = Embedding(12, 6);
        readonly Module<Tensor, Tensor> proj = Linear(6, 3);

        public EmbeddingModel() : base(nameof(EmbeddingModel)) => RegisterComponents();

        public override Tensor forward(Tensor x) => proj.call(emb.call(x));
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("cat")]
    [InlineData("svd")]
    public void Embedding_adapters_merge_into_lora_embedding_tensors(string type)
    {
        manual_seed(4);
        var peft = PeftModel.Create(new EmbeddingModel(), new LoraConfig { TargetModules = ["emb"], R = 3, LoraAlpha = 6, InitLoraWeights = LoraInit.Random }, "a");
        peft.AddAdapter("b", new LoraConfig { TargetModules = ["emb"], R = 3, LoraAlpha = 3, InitLoraWeights = LoraInit.Random });
        peft.AddWeightedAdapter(["a", "b"], Weights, "m", type);
        var layer = peft.Layers.Single();
        var (a, b, m) = ((LoraEmbeddingAdapter)layer["a"], (LoraEmbeddingAdapter)layer["b"], (LoraEmbeddingAdapter)layer["m"]);
        var ws = new[] { Weights[0] * a.Scaling, Weights[1] * b.Scaling };
        if (type == "linear")
        {
            Tensors.AssertClose(Shaped(WeightedSum([Flat(a.A), Flat(b.A)], ws.Select(w => F32(Math.Sqrt(Math.Abs(w)) * Math.Sign(w))).ToList()), a.A.shape), m.A, 1e-6, "lora_embedding_A");
            Tensors.AssertClose(Shaped(WeightedSum([Flat(a.B), Flat(b.B)], ws.Select(w => F32(Math.Sqrt(Math.Abs(w)))).ToList()), a.B.shape), m.B, 1e-6, "lora_embedding_B");
        }
        else
        {
            // cat is exact; svd truncates rank ≤ 6 to 3.
            var deltas = a.DeltaWeight(null!) * (type == "cat" ? Weights[0] : F32(ws[0])) + b.DeltaWeight(null!) * (type == "cat" ? Weights[1] : F32(ws[1]));
            if (type == "svd")
            {
                var (u, s, vh) = linalg.svd(deltas.t(), fullMatrices: false);
                deltas = u[.., ..3].matmul(diag(s[..3])).matmul(vh[..3]).t();
            }
            Tensors.AssertClose(deltas, m.DeltaWeight(null!), 2e-5, $"{type} embedding delta");
        }
        var keys = peft.AdapterTensors("m").Keys.ToList();
        Assert.Equal(["base_model.model.emb.lora_embedding_A", "base_model.model.emb.lora_embedding_B"], keys);
    }
}

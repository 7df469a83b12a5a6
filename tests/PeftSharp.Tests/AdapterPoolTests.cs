using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

/// <summary>The LRU pool: adapters kept on the host, attached on first use, the least recently used detached (values
/// kept) when the byte budget would be exceeded.</summary>
public sealed class AdapterPoolTests
{
    static readonly LoraConfig Config = new() { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8 };

    // r 4 on lin0 (16 -> 32) and lin1 (32 -> 32), float32: (4·16 + 32·4 + 4·32 + 32·4) · 4 bytes.
    const long AdapterBytes = (4 * 16 + 32 * 4 + 4 * 32 + 32 * 4) * 4;

    static Mlp Base()
    {
        manual_seed(12);
        var model = new Mlp();
        model.eval();
        return model;
    }

    /// <summary>Four random LoRAs, by name, as file-keyed tensors.</summary>
    static Dictionary<string, Dictionary<string, Tensor>> Adapters()
    {
        var adapters = new Dictionary<string, Dictionary<string, Tensor>>();
        foreach (var (name, seed) in new[] { ("a", 1), ("b", 2), ("c", 3), ("d", 4) })
        {
            manual_seed(seed);
            var peft = PeftModel.Create(Base(), Config with { InitLoraWeights = LoraInit.Random });
            adapters[name] = peft.AdapterTensors("default");
        }
        return adapters;
    }

    [Fact]
    public void The_least_recently_used_adapter_is_detached_when_the_budget_is_full()
    {
        var adapters = Adapters();
        var peft = PeftModel.For(Base());
        using var pool = new AdapterPool(peft, byteBudget: 2 * AdapterBytes);
        foreach (var (name, tensors) in adapters) pool.Register(name, Config, tensors);
        Assert.Empty(peft.AdapterNames);

        pool.Ensure(["a", "b"]);
        Assert.Equal(["b", "a"], pool.Resident);
        pool.Ensure(["c"]);
        Assert.Equal(["c", "b"], pool.Resident);
        pool.Ensure(["b", AdapterLayer.BaseOnly]);
        Assert.Equal(["b", "c"], pool.Resident);
        pool.Ensure(["d"]);
        Assert.Equal(["d", "b"], pool.Resident);
        Assert.Equal(["b", "d"], peft.AdapterNames.Order());
        Assert.Equal((4, 2), (pool.Loads, pool.Evictions));
        Assert.Equal(2 * AdapterBytes, pool.ResidentBytes);

        var error = Assert.Throws<InvalidOperationException>(() => pool.Ensure(["a", "b", "c"]));
        Assert.Contains("more than the budget", error.Message);
        Assert.Equal(["d", "b"], pool.Resident);
    }

    [Fact]
    public void A_mixed_batch_through_the_pool_equals_the_same_adapters_attached_directly()
    {
        var adapters = Adapters();
        var direct = PeftModel.For(Base());
        foreach (var (name, tensors) in adapters) direct.AddAdapter(name, Config, tensors);
        var peft = PeftModel.For(Base());
        using var pool = new AdapterPool(peft, byteBudget: 2 * AdapterBytes);
        foreach (var (name, tensors) in adapters) pool.Register(name, Config, tensors);

        using var x = randn(4, 16);
        foreach (var rows in new[] { new[] { "a", "b", AdapterLayer.BaseOnly, "a" }, ["c", "d", "d", "c"], ["a", AdapterLayer.BaseOnly, "b", "b"] })
        {
            using var expected = direct.Forward(x, rows);
            using var actual = pool.Forward(x, rows);
            Tensors.AssertEqual(expected, actual, string.Join(",", rows));
        }
        Assert.Equal(4, pool.Evictions);   // a, b out for c, d; c, d out for a, b
    }

    [Fact]
    public void Values_changed_while_attached_survive_a_detach_and_a_reattach()
    {
        var adapters = Adapters();
        var peft = PeftModel.For(Base());
        using var pool = new AdapterPool(peft, byteBudget: AdapterBytes);
        foreach (var (name, tensors) in adapters) pool.Register(name, Config, tensors);
        pool.Ensure(["a"]);
        Tensors.PerturbAdapters(peft, "a", 0.5);   // as training would
        var trained = peft.AdapterTensors("a");
        pool.Ensure(["b"]);
        Assert.DoesNotContain("a", peft.AdapterNames);
        pool.Ensure(["a"]);
        foreach (var (key, value) in peft.AdapterTensors("a"))
            Tensors.AssertEqual(trained[key], value, key);
    }

    [Fact]
    public void Cycling_adapters_through_the_pool_leaves_no_live_tensors()
    {
        var adapters = Adapters();
        var peft = PeftModel.For(Base());
        using var pool = new AdapterPool(peft, byteBudget: 2 * AdapterBytes);
        foreach (var (name, tensors) in adapters) pool.Register(name, Config, tensors);
        void Cycle() { foreach (var pair in new[] { ("a", "b"), ("c", "d"), ("a", "c") }) pool.Ensure([pair.Item1, pair.Item2]); }
        Cycle();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Cycle();
        Cycle();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void An_adapter_larger_than_the_budget_or_with_a_taken_name_is_refused()
    {
        var adapters = Adapters();
        var peft = PeftModel.For(Base());
        using var pool = new AdapterPool(peft, byteBudget: AdapterBytes - 1);
        Assert.Contains("more than the pool's budget", Assert.Throws<ArgumentException>(() => pool.Register("a", Config, adapters["a"])).Message);
        using var roomy = new AdapterPool(peft, byteBudget: AdapterBytes);
        roomy.Register("a", Config, adapters["a"]);
        Assert.Contains("already in the pool", Assert.Throws<ArgumentException>(() => roomy.Register("a", Config, adapters["b"])).Message);
        Assert.Contains("Unknown adapter(s) 'zz'", Assert.Throws<ArgumentException>(() => roomy.Ensure(["zz"])).Message);
    }
}

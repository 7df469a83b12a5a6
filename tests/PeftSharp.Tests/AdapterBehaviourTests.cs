using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>Every behaviour an adapted model promises, run over every row of <see cref="MethodMatrix"/>.</summary>
public sealed class AdapterBehaviourTests
{
    [Theory, MemberData(nameof(MethodMatrix.IdentityAtInit), MemberType = typeof(MethodMatrix))]
    public void An_adapter_at_init_leaves_the_output_unchanged(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var x = c.NewInput();
        using var before = model.call(x);
        c.Attach(model);
        using var after = model.call(x);
        Tensors.AssertClose(before, after, c.ChangesBase ? c.Tolerance : 0, "output at init vs base");
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Only_adapter_parameters_receive_gradients_and_change_in_training(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        model.train();
        var x = c.NewInput();
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToHashSet();
        Assert.NotEmpty(trainable);
        Assert.All(trainable, p => Assert.True(IsAdapterOrSaved(p, peft), $"{p} is trainable but belongs to the base model."));

        var before = Tensors.Snapshot(model);
        var optimizer = optim.Adam(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        for (int step = 0; step < 3; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            model.call(x).pow(2).mean().backward();
            if (step == 0)
                foreach (var (path, p) in model.named_parameters())
                    Assert.True(trainable.Contains(path) == p.grad is not null, $"{path}: gradient {(p.grad is null ? "missing" : "present")} but trainable = {trainable.Contains(path)}.");
            optimizer.step();
        }
        foreach (var (path, p) in model.named_parameters())
        {
            bool changed = !Tensors.Same(p, before[path]);
            Assert.True(trainable.Contains(path) == changed, $"{path}: changed = {changed}, trainable = {trainable.Contains(path)}.");
        }
    }

    // The base model's own parameters: under base_layer / original_module, or never wrapped. Biases trained by
    // bias="all" / "lora_only" are the exception PEFT makes on purpose.
    static bool IsAdapterOrSaved(string path, PeftModel peft) =>
        path.Contains(".adapters.") || path.Contains(".modules_to_save.") || path.StartsWith("model_adapters.")
        || peft.TrainableBaseParameters(PeftModel.DefaultAdapterName).Contains(path);

    static bool IsAdapterOf(string path, string adapterName) =>
        path.Contains($".adapters.{adapterName}.") || path.StartsWith($"model_adapters.{adapterName}.") || path.Contains($".modules_to_save.{adapterName}.");

    [Theory, MemberData(nameof(MethodMatrix.NotMergeable), MemberType = typeof(MethodMatrix))]
    public void A_method_that_cannot_merge_says_so_and_changes_nothing(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var x = c.NewInput();
        using var before = model.call(x);
        var weights = Tensors.Snapshot(model);

        var error = Assert.Throws<NotSupportedException>(() => peft.Merge());
        Assert.Contains("cannot be merged", error.Message);
        Assert.Contains(c.Config().MethodName, error.Message);
        Assert.Throws<NotSupportedException>(() => peft.MergeAndUnload());
        Assert.All(peft.Layers, l => Assert.False(l.IsMerged));
        foreach (var (path, p) in model.named_parameters()) Assert.True(Tensors.Same(p, weights[path]), $"{path} changed by a refused merge.");
        using var after = model.call(x);
        Tensors.AssertEqual(before, after, "output after a refused merge");
        peft.SetActiveAdapters("default");   // still usable
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void Merged_output_equals_unmerged_output(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var x = c.NewInput();
        using var unmerged = model.call(x);
        peft.Merge();
        Assert.All(peft.Layers, l => Assert.True(l.IsMerged));
        using var merged = model.call(x);
        Tensors.AssertClose(unmerged, merged, c.Tolerance, "merged vs unmerged");
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void Unmerge_restores_the_base_weights(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var before = Tensors.Snapshot(model);
        peft.Merge();
        Assert.Contains(before, p => !Tensors.Same(model.named_parameters().Single(q => q.name == p.Key).parameter, p.Value));
        peft.Unmerge();
        Assert.All(peft.Layers, l => Assert.False(l.IsMerged));
        foreach (var (path, p) in model.named_parameters())
            Tensors.AssertClose(before[path], p, 1e-5, $"{path} after unmerge");
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void Merge_and_unload_leaves_a_plain_model_with_the_adapted_output(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var plainKeys = c.NewModel().state_dict().Keys.ToList();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var x = c.NewInput();
        using var adapted = model.call(x);
        var plain = (Module<Tensor, Tensor>)peft.MergeAndUnload();
        Assert.DoesNotContain(plain.modules(), m => m is AdapterLayer or ModulesToSaveWrapper);
        Assert.Equal(plainKeys, plain.state_dict().Keys.ToList());
        using var merged = plain.call(x);
        Tensors.AssertClose(adapted, merged, c.Tolerance, "unloaded vs adapted");
        Assert.Throws<InvalidOperationException>(() => peft.SetActiveAdapters("default"));
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Disabling_gives_the_base_output_and_enabling_restores_the_adapted_one(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var x = c.NewInput();
        using var original = model.call(x);
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        using var adapted = model.call(x);
        Tensor disabled;
        using (peft.DisableAdapters())
        {
            disabled = model.call(x);
            Assert.True(peft.AdaptersDisabled);
        }
        using var enabled = model.call(x);
        Tensors.AssertEqual(adapted, enabled, "re-enabled vs adapted");
        Tensors.AssertDifferent(adapted, disabled, "disabled vs adapted");
        if (!c.ChangesBase)
        {
            Tensors.AssertEqual(original, disabled, "disabled vs original base");
            return;
        }
        // For PiSSA/OLoRA the base is the residual: what is left when the adapters are removed without merging.
        var unloaded = (Module<Tensor, Tensor>)peft.Unload();
        using var baseOutput = unloaded.call(x);
        Tensors.AssertEqual(baseOutput, disabled, "disabled vs unloaded residual base");
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void Disabling_a_merged_model_unmerges_it_and_gives_the_base_output(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var x = c.NewInput();
        Tensor baseOutput;
        using (peft.DisableAdapters()) baseOutput = model.call(x);
        peft.Merge();
        using (peft.DisableAdapters())
        {
            using var disabled = model.call(x);
            Tensors.AssertClose(baseOutput, disabled, c.Tolerance, "disabled after merge vs base");
        }
        Assert.All(peft.Layers, l => Assert.False(l.IsMerged));
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Saving_and_loading_into_a_fresh_model_reproduces_the_output(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var x = c.NewInput();
        using var expected = model.call(x);
        var directory = TempDirectory.Create();
        peft.Save(directory);

        var fresh = c.NewModel();
        var loaded = c.Load(fresh, directory);
        using var actual = fresh.call(x);
        Tensors.AssertClose(expected, actual, c.ExactTolerance, "loaded vs saved");
        Assert.Equal(["default"], loaded.ActiveAdapters);
        if (c.Sources is null) Assert.All(fresh.parameters(), p => Assert.False(p.requires_grad));
        else   // activating the composition makes it (only it) trainable; its loaded sources stay frozen
            Assert.All(fresh.named_parameters().Where(p => p.parameter.requires_grad), p => Assert.True(IsAdapterOf(p.name, "default"), $"{p.name} is trainable."));
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Two_adapters_give_different_outputs_and_set_active_switches_between_them(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        peft.AddAdapter("other", c.SecondConfig());
        Tensors.PerturbAdapters(peft, "default");
        Tensors.PerturbAdapters(peft, "other");
        var x = c.NewInput();
        using var first = model.call(x);
        peft.SetActiveAdapters("other");
        using var second = model.call(x);
        Tensors.AssertDifferent(first, second, "adapter 'default' vs 'other'");
        peft.SetActiveAdapters("default");
        using var firstAgain = model.call(x);
        Tensors.AssertEqual(first, firstAgain, "switching back to 'default'");
    }

    [Theory, MemberData(nameof(MethodMatrix.PerRow), MemberType = typeof(MethodMatrix))]
    public void Rows_of_a_mixed_batch_equal_separate_runs(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        peft.AddAdapter("other", c.SecondConfig());
        Tensors.PerturbAdapters(peft, "default");
        Tensors.PerturbAdapters(peft, "other");
        var x = c.NewInput();
        string[] rows = ["default", "other", AdapterLayer.BaseOnly, "default"];
        using var mixed = peft.Forward(x, rows);

        for (int i = 0; i < rows.Length; i++)
        {
            using var row = x[i..(i + 1)];
            Tensor alone;
            if (rows[i] == AdapterLayer.BaseOnly)
                using (peft.DisableAdapters()) alone = model.call(row);
            else
            {
                peft.SetActiveAdapters(rows[i]);
                alone = model.call(row);
            }
            Tensors.AssertClose(alone, mixed[i..(i + 1)], 1e-5, $"row {i} ({rows[i]})");
        }
    }

    [Theory, MemberData(nameof(MethodMatrix.NotPerRow), MemberType = typeof(MethodMatrix))]
    public void A_method_that_acts_on_the_whole_batch_refuses_per_row_adapters(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        peft.AddAdapter("other", c.SecondConfig());
        var x = c.NewInput();
        var error = Assert.Throws<NotSupportedException>(() => peft.Forward(x, ["default", "other", AdapterLayer.BaseOnly, "default"]));
        Assert.Contains(c.Config().MethodName, error.Message);
        Assert.Contains("one batch per adapter", error.Message);
        using var output = model.call(x);   // the model still runs normally
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void Deleting_adapters_removes_every_trace(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var plainKeys = c.NewModel().state_dict().Keys.ToList();
        var x = c.NewInput();
        using var original = model.call(x);
        var peft = c.Attach(model);
        peft.AddAdapter("other", c.SecondConfig());
        peft.DeleteAdapter("other");
        Assert.DoesNotContain(model.state_dict().Keys, k => k.Contains(".other."));
        Assert.Equal(["default", .. (c.Sources ?? []).Select(s => s.Name)], peft.AdapterNames.OrderBy(n => n != "default").ToList());

        peft.DeleteAdapter("default");
        foreach (var (source, _) in c.Sources ?? []) peft.DeleteAdapter(source);
        Assert.Empty(peft.AdapterNames);
        Assert.DoesNotContain(model.modules(), m => m is AdapterLayer or ModulesToSaveWrapper);
        Assert.Equal(plainKeys, model.state_dict().Keys.ToList());
        using var after = model.call(x);
        if (!c.ChangesBase) Tensors.AssertEqual(original, after, "output after deleting every adapter");
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void A_second_merge_changes_nothing(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        peft.Merge();
        var once = Tensors.Snapshot(model);
        peft.Merge();
        foreach (var (path, p) in model.named_parameters())
            Tensors.AssertEqual(once[path], p, $"{path} after a second merge");
    }

    [Theory, MemberData(nameof(MethodMatrix.Mergeable), MemberType = typeof(MethodMatrix))]
    public void A_safe_merge_of_a_NaN_adapter_raises_and_changes_nothing(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        Tensors.PerturbAdapters(peft, "default");
        var broken = peft.Layers[^1];
        using (no_grad()) broken["default"].parameters().First().fill_(float.NaN);
        var before = Tensors.Snapshot(model);

        var error = Assert.Throws<InvalidOperationException>(() => peft.Merge(safe: true));
        Assert.Contains(broken.Path, error.Message);
        Assert.All(peft.Layers, l => Assert.False(l.IsMerged));
        foreach (var (path, p) in model.named_parameters())
            Assert.True(Tensors.Same(p, before[path]) || path.Contains(".adapters."), $"{path} changed by a failed safe merge.");
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void A_few_training_steps_lower_the_loss(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        c.Attach(model);
        model.train();
        var x = c.NewInput();
        using var target = randn_like(model.call(x).detach());
        var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        float Loss()
        {
            using var scope = NewDisposeScope();
            using (no_grad()) return functional.mse_loss(model.call(x), target).item<float>();
        }
        float first = Loss();
        for (int step = 0; step < 20; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            functional.mse_loss(model.call(x), target).backward();
            optimizer.step();
        }
        float last = Loss();
        Assert.True(last < first, $"loss went from {first} to {last}.");
    }

    [Theory, MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void No_tensors_leak_per_forward_pass_or_training_step(string name)
    {
        var c = MethodMatrix.Get(name);
        var model = c.NewModel();
        var peft = c.Attach(model);
        model.train();
        var x = c.NewInput();
        var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-3);
        void Step()
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            model.call(x).pow(2).mean().backward();
            optimizer.step();
        }
        void Forward()
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            model.call(x);
        }
        Step();
        Forward();   // warm up: optimizer state and gradients exist from here on
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++)
        {
            Step();
            Forward();
        }
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}

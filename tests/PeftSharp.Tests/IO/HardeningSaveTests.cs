using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

/// <summary>A save replaces an adapter directory's two files together: a crash at any step leaves the old adapter or
/// the new one (never one save's weights with the other's config), and the next load or save removes what the crash
/// left behind.</summary>
public sealed class HardeningSaveTests
{
    static readonly string[] Steps =
    [
        "stage " + AdapterFiles.WeightsFileName, "stage " + AdapterFiles.ConfigFileName, "mark",
        "replace " + AdapterFiles.WeightsFileName, "replace " + AdapterFiles.ConfigFileName, "unmark",
    ];

    static Mlp NewMlp()
    {
        manual_seed(3);
        return new Mlp();
    }

    // Same shapes, another scaling and other weights: loading a mix of the two would go unnoticed by shape checks.
    static PeftModel Adapter(double alpha, int seed)
    {
        var peft = PeftModel.Create(NewMlp(), new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = alpha });
        manual_seed(seed);
        Tensors.PerturbAdapters(peft, "default");
        return peft;
    }

    static readonly Tensor Input = randn(2, 16);

    static Tensor Output(PeftModel peft)
    {
        using var _ = no_grad();
        return peft.Forward(Input);
    }

    static Tensor LoadedOutput(string directory) => Output(PeftModel.Load(NewMlp(), directory));

    static void AssertOnlyAdapterFiles(string directory) =>
        Assert.Equal([AdapterFiles.ConfigFileName, AdapterFiles.WeightsFileName], Directory.GetFiles(directory).Select(Path.GetFileName).Order());

    static void SaveCrashingBefore(PeftModel peft, string directory, string step)
    {
        AdapterDirectoryCommit.BeforeStep = s => { if (s == step) throw new SimulatedCrashException(s); };
        try
        {
            Assert.Throws<SimulatedCrashException>(() => peft.Save(directory));
        }
        finally
        {
            AdapterDirectoryCommit.BeforeStep = null;
        }
    }

    [Fact]
    public void A_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_adapter_and_the_next_load_cleans_up()
    {
        var (old, @new) = (Adapter(8, 1), Adapter(32, 2));
        using var oldOutput = Output(old);
        using var newOutput = Output(@new);
        Assert.False(Tensors.Same(oldOutput, newOutput));
        for (int i = 0; i < Steps.Length; i++)
        {
            var directory = TempDirectory.Create();
            old.Save(directory);
            Directory.CreateDirectory(Path.Combine(directory, "other"));
            File.WriteAllText(Path.Combine(directory, "other", "kept.txt"), "another adapter's folder");

            SaveCrashingBefore(@new, directory, Steps[i]);

            // Before the marker the old files stand; from the marker on the save is completed.
            var expected = Steps[i] is "stage adapter_model.safetensors" or "stage adapter_config.json" or "mark" ? oldOutput : newOutput;
            using var loaded = LoadedOutput(directory);
            Assert.True(Tensors.Same(expected, loaded), $"crash before '{Steps[i]}': the directory loads as {(Tensors.Same(oldOutput, loaded) ? "the old adapter" : Tensors.Same(newOutput, loaded) ? "the new adapter" : "neither adapter")}.");
            AssertOnlyAdapterFiles(directory);
            Assert.True(File.Exists(Path.Combine(directory, "other", "kept.txt")), "a subfolder was touched");
        }
    }

    [Fact]
    public void A_save_after_a_crash_completes_or_undoes_it_first_and_leaves_no_temporaries()
    {
        var (old, @new, third) = (Adapter(8, 1), Adapter(32, 2), Adapter(16, 3));
        using var thirdOutput = Output(third);
        foreach (var step in Steps)
        {
            var directory = TempDirectory.Create();
            old.Save(directory);
            SaveCrashingBefore(@new, directory, step);
            third.Save(directory);
            AssertOnlyAdapterFiles(directory);
            using var loaded = LoadedOutput(directory);
            Assert.True(Tensors.Same(thirdOutput, loaded), $"crash before '{step}', then a save: the directory does not load as that save.");
        }
    }

    [Fact]
    public void A_failed_save_leaves_the_previous_files_intact_and_no_staged_files()
    {
        var directory = TempDirectory.Create();
        Adapter(8, 1).Save(directory);
        var weights = File.ReadAllBytes(Path.Combine(directory, AdapterFiles.WeightsFileName));
        var config = File.ReadAllBytes(Path.Combine(directory, AdapterFiles.ConfigFileName));
        AdapterDirectoryCommit.BeforeStep = s => { if (s == "stage " + AdapterFiles.ConfigFileName) throw new IOException("disk full"); };
        try
        {
            Assert.Throws<IOException>(() => Adapter(32, 2).Save(directory));
        }
        finally
        {
            AdapterDirectoryCommit.BeforeStep = null;
        }
        Assert.Equal(weights, File.ReadAllBytes(Path.Combine(directory, AdapterFiles.WeightsFileName)));
        Assert.Equal(config, File.ReadAllBytes(Path.Combine(directory, AdapterFiles.ConfigFileName)));
        AssertOnlyAdapterFiles(directory);
    }

    [Fact]
    public void Leftovers_of_killed_saves_are_removed_by_the_next_load()
    {
        var old = Adapter(8, 1);
        using var oldOutput = Output(old);
        var directory = TempDirectory.Create();
        old.Save(directory);
        // What earlier versions and a kill while staging leave: temporaries and a half-written staged file, no marker.
        File.WriteAllBytes(Path.Combine(directory, $".{AdapterFiles.WeightsFileName}.{Guid.NewGuid():N}.tmp"), new byte[1000]);
        File.WriteAllBytes(Path.Combine(directory, $".{AdapterFiles.ConfigFileName}.{Guid.NewGuid():N}.tmp"), new byte[10]);
        File.WriteAllBytes(Path.Combine(directory, $".{AdapterFiles.WeightsFileName}.staged"), new byte[100]);
        using var loaded = LoadedOutput(directory);
        Assert.True(Tensors.Same(oldOutput, loaded));
        AssertOnlyAdapterFiles(directory);
    }
}

using PeftSharp.Native;

namespace PeftSharp.Tests;

/// <summary>The ELF patch that lets TorchSharp's native library load on Debian 12 (see build/ElfVersionNeedPatcher.cs).</summary>
public sealed class NativeLoadTests
{
    static string CopyOf(string path)
    {
        var copy = Path.Combine(TempDirectory.Create(), Path.GetFileName(path));
        File.Copy(path, copy);
        return copy;
    }

    [Fact]
    public void Marking_the_GLIBCXX_need_weak_is_idempotent_and_leaves_the_file_otherwise_the_same()
    {
        var library = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!File.Exists(library)) library = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");
        Assert.True(File.Exists(library), $"TorchSharp's native library was expected next to the tests at {library}.");
        var copy = CopyOf(library);
        var first = ElfVersionNeedPatcher.MarkVersionNeedWeak(copy, ElfVersionNeedPatcher.TorchSharpMissingVersion);
        Assert.Contains(first, new[] { "patched", "already weak" });
        var once = File.ReadAllBytes(copy);
        Assert.Equal("already weak", ElfVersionNeedPatcher.MarkVersionNeedWeak(copy, ElfVersionNeedPatcher.TorchSharpMissingVersion));
        Assert.Equal(once, File.ReadAllBytes(copy));
        var original = File.ReadAllBytes(library);
        Assert.Equal(original.Length, once.Length);
        Assert.True(original.Zip(once).Count(p => p.First != p.Second) <= 1, "the patch changes at most one byte (the flags of one Vernaux entry)");
    }

    [Fact]
    public void A_library_without_that_need_is_left_alone()
    {
        var ls = CopyOf("/bin/ls");
        var before = File.ReadAllBytes(ls);
        Assert.Equal("no such need", ElfVersionNeedPatcher.MarkVersionNeedWeak(ls, ElfVersionNeedPatcher.TorchSharpMissingVersion));
        Assert.Equal(before, File.ReadAllBytes(ls));
    }

    [Fact]
    public void A_file_that_is_not_ELF_is_refused()
    {
        var text = Path.Combine(TempDirectory.Create(), "not-elf.so");
        File.WriteAllText(text, "hello, this is not a shared library");
        Assert.Throws<InvalidDataException>(() => ElfVersionNeedPatcher.MarkVersionNeedWeak(text, ElfVersionNeedPatcher.TorchSharpMissingVersion));
    }

    [Fact]
    public void The_libtorch_version_preloaded_from_a_NuGet_cache_is_the_one_the_build_references()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Directory.Packages.props"))) root = root.Parent;
        Assert.NotNull(root);
        var props = File.ReadAllText(Path.Combine(root!.FullName, "Directory.Packages.props"));
        Assert.Contains($"<PackageVersion Include=\"libtorch-cpu-linux-x64\" Version=\"{TorchSharpNative.LibTorchVersion}\" />", props);
        // This host has a deps.json that puts the natives on the search path: nothing is preloaded here.
        TorchSharpNative.EnsureLoadable();
        Assert.Empty(TorchSharpNative.PreloadedFiles);
    }

    [Fact]
    public void Ensuring_TorchSharp_is_loadable_is_safe_to_repeat_once_it_is_loaded()
    {
        TorchSharpNative.EnsureLoadable();
        TorchSharpNative.EnsureLoadable();
        using var t = TorchSharp.torch.ones(2);
        Assert.Equal(2, t.sum().item<float>());
    }
}

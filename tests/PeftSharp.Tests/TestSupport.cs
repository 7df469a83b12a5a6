using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using TorchSharp;
using static TorchSharp.torch;

// Torch tests share the global random generator and thread-local dispose-scope statistics: run them one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace PeftSharp.Tests;

static class TestProcess
{
    // Before any test touches TorchSharp: OpenMP threads that sleep rather than spin (test assemblies run side by side).
#pragma warning disable CA2255
    [System.Runtime.CompilerServices.ModuleInitializer]
#pragma warning restore CA2255
    internal static void Initialize() => PeftSharp.Native.TorchSharpNative.EnsureLoadable();
}

static class Tensors
{
    public static void AssertClose(Tensor expected, Tensor actual, double tolerance, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        if (expected.numel() == 0) return;   // nothing to compare (an SPT target with no sensitive entries)
        using var difference = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max();
        double max = difference.item<double>();
        Assert.True(max <= tolerance, $"{what}: max |difference| = {max:G4} exceeds {tolerance:G4}.");
    }

    public static void AssertEqual(Tensor expected, Tensor actual, string what) => AssertClose(expected, actual, 0, what);

    public static void AssertDifferent(Tensor a, Tensor b, string what)
    {
        using var difference = (a - b).abs().max();
        Assert.True(difference.item<float>() > 1e-4, $"{what}: the outputs are the same.");
    }

    /// <summary>Same shape and bit-equal values (NaN is never equal).</summary>
    public static bool Same(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape)) return false;
        using var equal = a.detach().eq(b.detach()).all();
        return equal.item<bool>();
    }

    /// <summary>Copies of every parameter, by path.</summary>
    public static Dictionary<string, Tensor> Snapshot(nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());

    /// <summary>Adds noise to every adapter tensor, as training would, so behaviours that need the adapter to
    /// change the output (merge, switch, save) are tested on a non-trivial adapter.</summary>
    public static void PerturbAdapters(PeftModel peft, string adapterName, double scale = 0.1)
    {
        using var _ = no_grad();
        foreach (var layer in peft.Layers.Where(l => l.Contains(adapterName)))
            foreach (var p in layer[adapterName].parameters())
                p.add_(randn_like(p) * scale);
        foreach (var wrapper in peft.SavedModules.Where(w => w.Contains(adapterName)))
            foreach (var p in wrapper[adapterName].parameters())
                p.add_(randn_like(p) * scale);
        if (peft.ModelAdapters.TryGetValue(adapterName, out var modelAdapter))
            foreach (var p in modelAdapter.parameters())
                p.add_(randn_like(p) * scale);
    }
}

static class TempDirectory
{
    public static string Create()
    {
        var path = Path.Combine(Path.GetTempPath(), "peftsharp-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }
}

/// <summary>
/// What Hugging Face PEFT wrote in Fixtures/hf-peft-0.20 (see the README there): JSON cases whose tensors are
/// <c>{"shape": [...], "data": [row-major floats]}</c>, and adapter directories. Test classes import it with
/// <c>using static</c>.
/// </summary>
static class PeftFixtures
{
    public static readonly string FixtureDirectory = Path.Combine(AppContext.BaseDirectory, "Fixtures", "hf-peft-0.20");

    public static JsonObject LoadFixture(string fileName) =>
        (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(FixtureDirectory, fileName)))!;

    public static Tensor Read(JsonNode node)
    {
        var shape = node["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
        var data = node["data"]!.AsArray().Select(d => (float)d!.GetValue<double>()).ToArray();
        return tensor(data).reshape(shape);
    }

    /// <summary>Copies a case's <c>base_weights</c> (by PyTorch parameter name) into <paramref name="model"/>'s parameters.</summary>
    public static void CopyBaseWeights(nn.Module model, JsonNode fixtureCase)
    {
        using var _ = no_grad();
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, value) in fixtureCase["base_weights"]!.AsObject()) parameters[name].copy_(Read(value!));
    }
}

using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using static TorchSharp.torch;
using static PeftSharp.Tests.PeftFixtures;

namespace PeftSharp.Tests;

/// <summary>
/// <c>AddWeightedAdapter</c> against numbers Hugging Face PEFT's own <c>LoraModel.add_weighted_adapter</c> produced
/// (Fixtures/hf-peft-0.20/weighted_merge_mlp.json, written by make_weighted_merge_fixture.py there; see its README):
/// the same base weights and adapters, the same arguments, one case per combination type.
/// </summary>
public sealed class WeightedMergeFixtureTests
{
    static readonly JsonObject Fixture = LoadFixture("weighted_merge_mlp.json");
    static readonly string[] Layers = ["lin0", "lin1"];

    /// <summary>The factor-wise types and cat come out bit-equal to PEFT's here; this allows for another CPU's float32 sums.</summary>
    const double FactorTolerance = 1e-6;
    /// <summary>The svd types' factors, every ΔW and the outputs (values up to ~5): an SVD by another LAPACK, and float32
    /// products (measured: at most 4e-6 against PEFT, on factors of the svd types).</summary>
    const double DeltaTolerance = 2e-5;

    public static TheoryData<string> CombinationTypes() =>
        new(Fixture["cases"]!.AsArray().Select(c => c!["combination_type"]!.GetValue<string>()));

    static JsonNode Case(string type) => Fixture["cases"]!.AsArray().Single(c => c!["combination_type"]!.GetValue<string>() == type)!;

    static LoraLinearAdapter Lora(PeftModel peft, string layer, string adapter) => (LoraLinearAdapter)peft.Layers.Single(l => l.Path == layer)[adapter];

    /// <summary>The fixture's MLP with its four LoRA adapters ("one" r 4 alpha 8, "two" r 2 alpha 3, "three" r 4 alpha 4,
    /// "four" r 4 alpha 6, on lin0 and lin1) holding PEFT's tensors.</summary>
    static (Mlp Model, PeftModel Peft) ReferenceModel()
    {
        var model = new Mlp();
        CopyBaseWeights(model, Fixture);
        PeftModel? peft = null;
        foreach (var (name, kwargs) in Fixture["adapters"]!.AsObject())
        {
            var config = new LoraConfig
            {
                TargetModules = TargetModules.List(kwargs!["target_modules"]!.AsArray().Select(t => t!.GetValue<string>())),
                R = kwargs["r"]!.GetValue<int>(),
                LoraAlpha = kwargs["lora_alpha"]!.GetValue<double>(),
                LoraDropout = kwargs["lora_dropout"]!.GetValue<double>(),
            };
            if (peft is null) peft = PeftModel.Create(model, config, name);
            else peft.AddAdapter(name, config);
            using (no_grad())
                foreach (var layer in Layers)
                {
                    var lora = Lora(peft, layer, name);
                    lora.A.copy_(Read(Fixture["adapter_state"]![$"{name}.{layer}.lora_A"]!));
                    lora.B.copy_(Read(Fixture["adapter_state"]![$"{name}.{layer}.lora_B"]!));
                }
        }
        return (model, peft!);
    }

    /// <summary>The reference model with case <paramref name="type"/>'s merge made as PEFT made it, and the new adapter's name.</summary>
    static (Mlp Model, PeftModel Peft, JsonNode Case, string Name) MergedAsPeftDid(string type)
    {
        var c = Case(type);
        var (model, peft) = ReferenceModel();
        var kwargs = c["kwargs"]!;
        var name = c["adapter_name"]!.GetValue<string>();
        peft.AddWeightedAdapter(
            c["adapters"]!.AsArray().Select(a => a!.GetValue<string>()).ToList(),
            c["weights"]!.AsArray().Select(w => w!.GetValue<double>()).ToList(),
            name,
            type,
            svdRank: kwargs["svd_rank"]?.GetValue<int>(),
            density: kwargs["density"]?.GetValue<double>(),
            majoritySignMethod: kwargs["majority_sign_method"]?.GetValue<string>() ?? "total");
        return (model, peft, c, name);
    }

    [Theory]
    [MemberData(nameof(CombinationTypes))]
    public void Each_combination_type_gives_the_adapter_PEFTs_add_weighted_adapter_gave(string type)
    {
        var (model, peft, c, name) = MergedAsPeftDid(type);

        bool svd = type.EndsWith("svd", StringComparison.Ordinal);
        foreach (var layer in Layers)
        {
            var merged = Lora(peft, layer, name);
            var (theirA, theirB) = (Read(c["tensors"]![$"{layer}.lora_A"]!), Read(c["tensors"]![$"{layer}.lora_B"]!));
            Assert.Equal(theirA.shape, merged.A.shape);
            Assert.Equal(theirB.shape, merged.B.shape);
            if (svd)
            {
                // Each singular vector's sign is the SVD routine's choice: flip ours to PEFT's, component by component
                // (A's row i and B's column i together, which leaves B A unchanged), then compare the factors.
                using var signs = (merged.A * theirA).sum(dim: 1).sign();
                Assert.True(signs.abs().min().item<float>() == 1, $"{type} at {layer}: a component is orthogonal to PEFT's.");
                Tensors.AssertClose(theirA, merged.A * signs.unsqueeze(1), DeltaTolerance, $"{type} lora_A of {layer} (up to the sign of each component)");
                Tensors.AssertClose(theirB, merged.B * signs.unsqueeze(0), DeltaTolerance, $"{type} lora_B of {layer} (up to the sign of each component)");
            }
            else
            {
                Tensors.AssertClose(theirA, merged.A, FactorTolerance, $"{type} lora_A of {layer}");
                Tensors.AssertClose(theirB, merged.B, FactorTolerance, $"{type} lora_B of {layer}");
            }
            Assert.Equal(c["scaling"]![layer]!.GetValue<double>(), merged.Scaling);
            using var delta = merged.DeltaWeight(null!);
            Tensors.AssertClose(Read(c["delta_weights"]![layer]!), delta, DeltaTolerance, $"{type} delta weight of {layer}");
        }

        // And the model with only the merged adapter active computes what PEFT's did.
        model.eval();
        peft.SetActiveAdapters(name);
        using (no_grad())
            Tensors.AssertClose(Read(c["adapted_output"]!), model.call(Read(Fixture["input"]!)), DeltaTolerance, $"{type} output with the merged adapter");
    }

    [Theory]
    [MemberData(nameof(CombinationTypes))]
    public void Each_merged_adapter_saves_the_config_fields_PEFT_gave_it(string type)
    {
        var (_, peft, c, name) = MergedAsPeftDid(type);
        var directory = TempDirectory.Create();
        peft.Save(directory, [name]);
        var ours = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(directory, name, AdapterFiles.ConfigFileName)))!;
        foreach (var (field, theirs) in c["config"]!.AsObject())
        {
            Assert.True(ours.ContainsKey(field), $"{type}: our adapter_config.json has no {field}.");
            // PEFT holds target_modules as a set: compare it in sorted order.
            var (expected, actual) = field == "target_modules" ? (Sorted(theirs!), Sorted(ours[field]!)) : (theirs, ours[field]);
            Assert.True(JsonNode.DeepEquals(expected, actual),
                        $"{type}: {field} is {expected?.ToJsonString()} in PEFT's merged config, {actual?.ToJsonString()} in ours.");
        }
    }

    static JsonArray Sorted(JsonNode names) =>
        new(names.AsArray().Select(t => t!.GetValue<string>()).Order(StringComparer.Ordinal).Select(n => (JsonNode?)JsonValue.Create(n)).ToArray());
}

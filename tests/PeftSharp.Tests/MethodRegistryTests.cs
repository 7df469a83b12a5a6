using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PeftSharp.Adapters;
using PeftSharp.Methods;
using PeftSharp.Methods.Bottleneck;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests;

/// <summary>
/// The registry and the one-declaration contract: every registered method has a matrix row, its config survives a trip
/// through its file, what it saves is read by the inspection, options are its own, ranges come from the declaration, and
/// a method defined outside the library needs only its config, its layer and one registration.
/// </summary>
public sealed class MethodRegistryTests
{
    [Fact]
    public void Every_registered_method_has_a_method_matrix_row()
    {
        var covered = MethodMatrix.Cases.Select(c => c.MethodName).ToHashSet();
        var missing = MethodList.All.Select(m => m.Name).Where(n => !covered.Contains(n) && n != ToyScaleConfig.Name).ToList();
        Assert.True(missing.Count == 0, $"Registered methods without a row in MethodMatrix: {string.Join(", ", missing)}.");
    }

    [Fact]
    public void A_method_merges_exactly_when_its_matrix_rows_say_so()
    {
        foreach (var row in MethodMatrix.Cases)
            Assert.True(row.Config().Merges == row.CanMerge, $"{row.Name}: the config says Merges = {row.Config().Merges}, the row CanMerge = {row.CanMerge}.");
    }

    public static IEnumerable<object[]> Methods => MethodList.All.Where(m => m.Name != ToyScaleConfig.Name).Select(m => new object[] { m.Name });

    [Theory]
    [MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void A_config_round_trips_through_its_file_unchanged(string name)
    {
        var config = MethodMatrix.Get(name).Config();
        foreach (var asPlainDelta in new[] { false, true })
        {
            var written = ConfigJson.ToSortedJson(config.ToPeftJson(asPlainDelta));
            var read = MethodList.ConfigFromPeftJson((JsonObject)JsonNode.Parse(written)!, "adapter_config.json");
            Assert.Equal(config.GetType(), read.GetType());
            read.Validate();
            Assert.Equal(written, ConfigJson.ToSortedJson(read.ToPeftJson(asPlainDelta)));
        }
    }

    [Theory]
    [MemberData(nameof(Methods))]
    public void A_method_preset_round_trips_and_its_options_bind_to_their_own_fields(string method)
    {
        var info = MethodList.Find(method);
        var config = info.CreateConfig(info.Preset().TargetsLayers ? TargetModules.List(["x"]) : null, new Dictionary<string, string>());
        var written = ConfigJson.ToSortedJson(config.ToPeftJson(false));
        var read = MethodList.ConfigFromPeftJson((JsonObject)JsonNode.Parse(written)!, "adapter_config.json");
        Assert.Equal(written, ConfigJson.ToSortedJson(read.ToPeftJson(false)));
        // Each parameter names a field the file has (or is a view of one, such as the bottleneck's scaling).
        var fields = config.ToPeftJson(false);
        foreach (var p in info.Parameters)
            Assert.True(fields.ContainsKey(p.JsonName) || p.JsonName == "scaling_option", $"{method} --{p.Name}: the file has no field '{p.JsonName}'.");
    }

    [Fact]
    public void Floats_are_written_as_floats_and_layer_fields_only_where_PEFT_has_them()
    {
        var lora = new LoraConfig { TargetModules = ["q"], LoraAlpha = 16 }.ToPeftJson();
        var text = ConfigJson.ToSortedJson(lora);
        Assert.Contains("\"lora_dropout\": 0.0", text);
        Assert.Contains("\"lora_alpha\": 16.0", text);
        Assert.Contains("\"r\": 8,", text);
        var ia3 = new PeftSharp.Methods.Activation.IA3Config { TargetModules = ["q"] }.ToPeftJson();
        Assert.False(ia3.ContainsKey("layers_to_transform"));
        Assert.False(ia3.ContainsKey("layers_pattern"));
        var ln = new PeftSharp.Methods.Activation.LnTuningConfig { TargetModules = ["ln"] }.ToPeftJson();
        Assert.False(ln.ContainsKey("layers_to_transform"));
    }

    [Theory]
    [MemberData(nameof(MethodMatrix.Names), MemberType = typeof(MethodMatrix))]
    public void The_inspection_reads_what_a_method_saves(string name)
    {
        var row = MethodMatrix.Get(name);
        var peft = row.Attach(row.NewModel());
        Tensors.PerturbAdapters(peft, PeftModel.DefaultAdapterName);
        var directory = TempDirectory.Create();
        foreach (var asPlainDelta in new[] { true, false })
        {
            peft.Save(directory, [PeftModel.DefaultAdapterName], asPlainDelta);
            var inspection = AdapterInspection.Read(directory);
            Assert.True(inspection.IsValid, $"{name} (asPlainDelta {asPlainDelta}): {string.Join("; ", inspection.Problems)}");
            // Every layer whose adapter holds tensors is one module of the inspection, under its path.
            var withTensors = peft.Layers.Where(l => l.Contains(PeftModel.DefaultAdapterName) && l[PeftModel.DefaultAdapterName].FileTensors().Any())
                .Select(l => l.Path).Order().ToList();
            if (row.Config().FileTensorMarkers.Count > 0) Assert.Equal(withTensors, inspection.Modules.Select(m => m.Path).Order().ToList());
            var total = SafeTensorCount(directory);
            Assert.Equal(total, inspection.Modules.Sum(m => m.Tensors.Count) + inspection.OtherTensors.Count);
        }
    }

    static int SafeTensorCount(string directory) => PeftSharp.IO.SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName)).Tensors.Count;

    [Fact]
    public void Options_are_per_method_and_bad_values_name_the_option()
    {
        var bottleneck = MethodList.Find("pfeiffer");
        Assert.Equal("16", bottleneck.Parameters.Single(p => p.Name == "reduction").Default);
        Assert.Equal("mam_adapter", bottleneck.Parameters.Single(p => p.Name == "init").Default);
        Assert.Equal("true", MethodList.Find("lora").Parameters.Single(p => p.Name == "init").Default);
        Assert.Equal("pissa", MethodList.Find("pissa").Parameters.Single(p => p.Name == "init").Default);
        Assert.Contains("residual_before_ln", MethodList.Find("houlsby").Parameters.Single(p => p.Name == "residual").JsonName);

        var foreign = Assert.Throws<ArgumentException>(() => MethodList.Find("lora").CreateConfig(TargetModules.List(["q"]), new Dictionary<string, string> { ["reduction"] = "4" }));
        Assert.Contains("lora has no option --reduction", foreign.Message);
        Assert.Contains("--rank", foreign.Message);
        var bad = Assert.Throws<ArgumentException>(() => MethodList.Find("lora").CreateConfig(TargetModules.List(["q"]), new Dictionary<string, string> { ["rank"] = "eight" }));
        Assert.Contains("--rank needs a whole number", bad.Message);

        var bound = (BottleneckConfig)MethodList.Find("parallel-adapter").CreateConfig(null, new Dictionary<string, string> { ["scaling"] = "learned", ["residual"] = "post_add", ["size"] = "8" });
        Assert.Equal(BottleneckScaling.Learned, bound.ScalingMode);
        Assert.Equal(4, bound.Scaling);   // the preset's start value
        Assert.Equal(ResidualSource.PostAdd, bound.ResidualBeforeLn);
        Assert.Equal(8, bound.BottleneckSize);
        Assert.True(bound.IsParallel);

        var lora = (LoraConfig)MethodList.Find("lora").CreateConfig(TargetModules.List(["q"]), new Dictionary<string, string> { ["rank"] = "4" });
        Assert.Equal(4, lora.LoraAlpha);   // alpha follows the rank when only the rank is given
    }

    [Fact]
    public void Declared_ranges_are_checked_and_name_the_field_and_the_option()
    {
        var rank = Assert.Throws<ArgumentOutOfRangeException>(() => new LoraConfig { TargetModules = ["q"], R = 0 }.Validate());
        Assert.Contains("r (--rank)", rank.Message);
        var dropout = Assert.Throws<ArgumentOutOfRangeException>(() => new LoraConfig { TargetModules = ["q"], LoraDropout = 1 }.Validate());
        Assert.Contains("lora_dropout (--dropout)", dropout.Message);
        var nan = Assert.Throws<ArgumentOutOfRangeException>(() => new LoraConfig { TargetModules = ["q"], LoraAlpha = double.NaN }.Validate());
        Assert.Contains("finite", nan.Message);
        var huge = Assert.Throws<ArgumentOutOfRangeException>(() => new BottleneckConfig { TargetModules = ["q"], BottleneckSize = 2_000_000 }.Validate());
        Assert.Contains("bottleneck_size (--size)", huge.Message);
    }

    [Fact]
    public void A_file_asking_for_a_huge_size_is_refused_before_anything_is_allocated()
    {
        var directory = TempDirectory.Create();
        var model = new Mlp();
        var peft = PeftModel.Create(model, new BottleneckConfig { TargetModules = ["lin0"], BottleneckSize = 4 });
        peft.Save(directory);
        var path = Path.Combine(directory, AdapterFiles.ConfigFileName);
        var json = (JsonObject)JsonNode.Parse(File.ReadAllText(path))!;
        json["bottleneck_size"] = 2_000_000;
        File.WriteAllText(path, json.ToJsonString());
        var error = Assert.ThrowsAny<PeftSharp.IO.AdapterFileException>(() => PeftModel.Load(new Mlp(), directory));
        Assert.Contains("bottleneck_size", error.Message);
        Assert.Contains(AdapterFiles.ConfigFileName, error.Message);

        json["bottleneck_size"] = "wide";
        File.WriteAllText(path, json.ToJsonString());
        var wrongType = Assert.ThrowsAny<PeftSharp.IO.AdapterFileException>(() => PeftModel.Load(new Mlp(), directory));
        Assert.Contains("field 'bottleneck_size' should be an integer", wrongType.Message);
    }

    [Fact]
    public void A_config_with_a_field_given_twice_or_invalid_UTF8_is_refused_naming_the_file()
    {
        var directory = TempDirectory.Create();
        PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = 2 }).Save(directory);
        var path = Path.Combine(directory, AdapterFiles.ConfigFileName);
        var text = File.ReadAllText(path);
        File.WriteAllText(path, text.Replace("\"r\": 2,", "\"r\": 2, \"r\": 4,"));
        var twice = Assert.ThrowsAny<PeftSharp.IO.AdapterFileException>(() => AdapterFiles.ReadConfig(directory));
        Assert.Contains(path, twice.Message);
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        int at = text.IndexOf("lin0", StringComparison.Ordinal);
        bytes[at] = 0xC3;   // a lead byte followed by an ASCII byte: not UTF-8
        File.WriteAllBytes(path, bytes);
        var utf8 = Assert.ThrowsAny<PeftSharp.IO.AdapterFileException>(() => AdapterFiles.ReadConfig(directory));
        Assert.Contains("UTF-8", utf8.Message);
    }

    [Fact]
    public void Load_errors_name_the_file_and_the_field_without_programmer_lines()
    {
        var directory = TempDirectory.Create();
        PeftModel.Create(new Mlp(), new LoraConfig { TargetModules = ["lin0"], R = 2 }).Save(directory);
        var path = Path.Combine(directory, AdapterFiles.ConfigFileName);
        var original = File.ReadAllText(path);
        void Edit(Action<JsonObject> edit)
        {
            var json = (JsonObject)JsonNode.Parse(original)!;
            edit(json);
            File.WriteAllText(path, json.ToJsonString());
        }

        Edit(j => j["r"] = 0);
        var rank = Assert.ThrowsAny<Exception>(() => PeftModel.Load(new Mlp(), directory));
        Assert.Contains(path, rank.Message);
        Assert.Contains("r (--rank)", rank.Message);
        Assert.DoesNotContain("(Parameter", rank.Message);
        Assert.DoesNotContain("Actual value", rank.Message);

        Edit(j => j["rank_pattern"] = new JsonObject { ["lin(0"] = 2 });
        var regex = Assert.ThrowsAny<Exception>(() => PeftModel.Load(new Mlp(), directory));
        Assert.Contains(path, regex.Message);
        Assert.Contains("rank_pattern['lin(0']", regex.Message);

        Edit(j => j["modules_to_save"] = new JsonArray("classifier"));
        var missing = Assert.ThrowsAny<ArgumentException>(() => PeftModel.Load(new Mlp(), directory));
        Assert.Contains(path, missing.Message);
        Assert.Contains("'classifier'", missing.Message);
    }

    [Theory]
    [InlineData("pissa")]
    [InlineData("olora")]
    public void A_file_in_PEFTs_unconverted_layout_loads_as_the_converted_one(string init)
    {
        // Train (perturb) a PiSSA/OLoRA adapter, save it both ways, and load each onto a fresh, unmodified base.
        var config = new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Parse(init) };
        manual_seed(5);
        var peft = PeftModel.Create(Fresh(), config);
        Tensors.PerturbAdapters(peft, PeftModel.DefaultAdapterName, 0.2);
        manual_seed(9);
        var x = randn(6, 3, 16);
        using var trained = peft.Forward(x).detach();
        var converted = TempDirectory.Create();
        var unconverted = TempDirectory.Create();
        peft.Save(converted);
        peft.Save(unconverted, asPlainDelta: false);
        Assert.Equal(init, ((LoraConfig)AdapterFiles.ReadConfig(unconverted)).InitLoraWeights.Name);
        Assert.True(AdapterInspection.Read(unconverted).IsValid, string.Join("; ", AdapterInspection.Read(unconverted).Problems));

        using var fromConverted = PeftModel.Load(Fresh(), converted).Forward(x).detach();
        using var fromUnconverted = PeftModel.Load(Fresh(), unconverted).Forward(x).detach();
        Tensors.AssertClose(fromConverted, fromUnconverted, 1e-5, $"{init}: unconverted vs converted file");
        Tensors.AssertClose(trained, fromUnconverted, 1e-5, $"{init}: reloaded vs trained");
    }

    static Mlp Fresh()
    {
        manual_seed(3);
        var model = new Mlp();
        model.eval();
        return model;
    }

    [Fact]
    public void A_method_defined_outside_the_library_needs_its_config_its_layer_and_one_registration()
    {
        ToyScaleConfig.EnsureRegistered();
        var method = MethodList.Find(ToyScaleConfig.Name);
        Assert.Equal("gain", method.Parameters.Single().Name);
        Assert.Equal("toy_gain", method.Parameters.Single().JsonName);

        var config = method.CreateConfig(TargetModules.List(["lin0"]), new Dictionary<string, string> { ["gain"] = "2" });
        var model = Fresh();
        manual_seed(9);
        var x = randn(2, 3, 16);
        using var before = ((Module<Tensor, Tensor>)model).call(x).detach();
        var peft = PeftModel.Create(model, config);
        // Its frozen tensor does not train; its buffer goes into the file.
        var layer = peft.Layers.Single();
        Assert.True(layer[PeftModel.DefaultAdapterName].get_parameter("toy_scale")!.requires_grad);
        Assert.False(layer[PeftModel.DefaultAdapterName].get_parameter("toy_frozen")!.requires_grad);
        Tensors.PerturbAdapters(peft, PeftModel.DefaultAdapterName);
        using var adapted = peft.Forward(x).detach();
        Tensors.AssertDifferent(before, adapted, "the toy adapter");

        var directory = TempDirectory.Create();
        peft.Save(directory);
        var inspection = AdapterInspection.Read(directory);
        Assert.True(inspection.IsValid);
        Assert.Single(inspection.Modules);
        Assert.Contains(inspection.Modules[0].Tensors, t => t.Name.EndsWith(".toy_mask"));
        Assert.Contains("\"toy_gain\": 2.0", File.ReadAllText(Path.Combine(directory, AdapterFiles.ConfigFileName)));

        var reloaded = PeftModel.Load(Fresh(), directory);
        using var again = reloaded.Forward(x).detach();
        Tensors.AssertEqual(adapted, again, "the reloaded toy adapter");
        var toy = reloaded.Layers.Single()[PeftModel.DefaultAdapterName];
        Tensors.AssertEqual(((ToyScaleAdapter)layer[PeftModel.DefaultAdapterName]).Mask, ((ToyScaleAdapter)toy).Mask, "the buffer");
    }

    [Fact]
    public void A_method_that_needs_calibration_gets_each_targets_input_covariance()
    {
        var model = Fresh();
        manual_seed(4);
        var batches = new[] { randn(5, 16), randn(3, 16) };
        var config = new CalibratedToyConfig { TargetModules = ["lin0"] };
        Assert.Throws<ArgumentException>(() => PeftModel.Create(Fresh(), config));
        PeftModel.Create(model, config, calibrate: () => { foreach (var b in batches) ((Module<Tensor, Tensor>)model).call(b); });
        var rows = cat(batches, 0).to(ScalarType.Float64);
        using var expected = rows.t().matmul(rows) / rows.shape[0];
        Assert.Equal(8, CalibratedToyConfig.LastCount);
        Tensors.AssertClose(expected, CalibratedToyConfig.LastCovariance!, 1e-9, "C = XᵀX / N of lin0's inputs");
    }
}

/// <summary>A method defined in the test assembly: y = W x ⊙ (g·s) with a learned per-output scale s (starts at 1),
/// a fixed gain g (its hyperparameter), a frozen parameter and a buffer, to show what adding a method takes.</summary>
public sealed record ToyScaleConfig : AdapterConfig
{
    public const string Name = "toy-scale";
    static readonly Lock Gate = new();

    /// <summary>Registers the method once for the test run (the one line a method needs).</summary>
    public static void EnsureRegistered()
    {
        lock (Gate)
            if (!MethodList.All.Any(m => m.Name == Name))
                MethodList.Register(Name, "Test", "y = W x ⊙ (g·s)", "none (a test)", () => new ToyScaleConfig());
    }

    [JsonPropertyName("toy_gain"), Option("gain", "g: a fixed factor on the learned scale", Min = 0, MinExclusive = true, Max = 100)]
    public double Gain { get; init; } = 1;

    public override string MethodName => Name;
    public override string PeftType => "TOY_SCALE";
    public override string SupportedLayerTypes => "Linear";
    public override bool CanHold(Module module) => module is Linear;
    public override IReadOnlyList<string> FileTensorMarkers => [".toy_"];

    public override AdapterModule CreateAdapter(AdapterContext context) =>
        new ToyScaleAdapter(AdapterModule.BaseWeight(context.BaseLayer).shape[0], Gain);
}

public sealed class ToyScaleAdapter : AdapterModule
{
    readonly Parameter toy_scale, toy_frozen;
    readonly Tensor toy_mask;
    readonly double _gain;

    public ToyScaleAdapter(long width, double gain) : base(nameof(ToyScaleAdapter))
    {
        _gain = gain;
        toy_scale = Parameter(ones(width));
        toy_frozen = Parameter(zeros(width));
        toy_mask = arange(width).remainder(2).to(ScalarType.Float32);
        register_parameter("toy_scale", toy_scale);
        register_parameter("toy_frozen", toy_frozen);
        register_buffer("toy_mask", toy_mask);
    }

    public Tensor Mask => toy_mask;
    public override string MethodName => ToyScaleConfig.Name;
    public override bool Trains(string name) => name == "toy_scale";

    public override Tensor Apply(Tensor x, Tensor result, Module<Tensor, Tensor> baseLayer) =>
        result.mul_(toy_scale * _gain + toy_frozen * toy_mask);
}

/// <summary>A method that needs calibration: it records the statistics it is given (and is otherwise the identity).</summary>
public sealed record CalibratedToyConfig : AdapterConfig
{
    public static Tensor? LastCovariance;
    public static long LastCount;

    public override string MethodName => "calibrated-toy";
    public override string PeftType => "CALIBRATED_TOY";
    public override string SupportedLayerTypes => "Linear";
    public override bool CanHold(Module module) => module is Linear;
    public override bool NeedsCalibration => true;

    public override AdapterModule CreateAdapter(AdapterContext context)
    {
        LastCovariance = context.Calibration!.Covariance.clone();
        LastCount = context.Calibration.Count;
        return new ToyScaleAdapter(AdapterModule.BaseWeight(context.BaseLayer).shape[0], 1);
    }
}

/// <summary>Adding an adapter from tensors in memory takes the same path as loading a file.</summary>
public sealed class AdapterFromTensorsTests
{
    public static IEnumerable<object[]> Rows => MethodMatrix.Cases.Where(c => c.Sources is null).Select(c => new object[] { c.Name });

    [Theory]
    [MemberData(nameof(Rows))]
    public void An_adapter_added_from_its_tensors_gives_the_same_outputs_as_the_original(string name)
    {
        var row = MethodMatrix.Get(name);
        var peft = row.Attach(row.NewModel());
        Tensors.PerturbAdapters(peft, PeftModel.DefaultAdapterName);
        var input = row.NewInput();
        using var expected = ((Module<Tensor, Tensor>)peft.Model).call(input).detach();

        // As a file would hold it: PEFT's converted form, and the config as written.
        var tensors = peft.AdapterTensors(PeftModel.DefaultAdapterName, asPlainDelta: true);
        var config = MethodList.ConfigFromPeftJson(peft.Config(PeftModel.DefaultAdapterName).ToPeftJson(), "in memory");
        var copy = PeftModel.For(row.NewModel());
        copy.AddAdapter("copy", config, tensors);
        copy.SetActiveAdapters("copy");
        using var actual = ((Module<Tensor, Tensor>)copy.Model).call(input).detach();
        Tensors.AssertClose(expected, actual, row.ChangesBase ? row.Tolerance : row.ExactTolerance + 1e-6, $"{name} added from tensors");
        foreach (var t in tensors.Values) t.Dispose();
    }

    [Fact]
    public void Tensors_that_do_not_fit_are_refused_before_the_model_changes()
    {
        var row = MethodMatrix.Get("mlp-lora");
        var peft = row.Attach(row.NewModel());
        var tensors = peft.AdapterTensors(PeftModel.DefaultAdapterName);
        var key = tensors.Keys.First(k => k.EndsWith("lora_A.weight"));
        tensors[key] = zeros(3, 3);
        var target = PeftModel.For(row.NewModel());
        var before = Tensors.Snapshot(target.Model);
        var error = Assert.ThrowsAny<PeftSharp.IO.AdapterFileException>(() => target.AddAdapter("copy", row.Config(), tensors));
        Assert.Contains(key, error.Message);
        Assert.Contains("the tensors given", error.Message);
        Assert.Empty(target.AdapterNames);
        foreach (var (path, p) in target.Model.named_parameters()) Tensors.AssertEqual(before[path], p, path);
    }
}

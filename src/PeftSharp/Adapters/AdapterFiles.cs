using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Methods;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>
/// Hugging Face PEFT's adapter directory: <c>adapter_config.json</c> (PEFT's field names and values) and
/// <c>adapter_model.safetensors</c> with keys <c>base_model.model.&lt;module path&gt;.&lt;tensor name&gt;</c>, no adapter
/// name inside keys. Loading checks the whole file against the model before anything changes.
/// </summary>
public static class AdapterFiles
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    public const string KeyPrefix = "base_model.model.";

    /// <summary>Reads and validates <c>adapter_config.json</c> in <paramref name="directory"/>.</summary>
    public static AdapterConfig ReadConfig(string directory)
    {
        AdapterFileGuard.CheckRegularFile(Path.Combine(directory, ConfigFileName), AdapterFileGuard.MaxConfigBytes);
        var (configPath, _) = Paths(directory);
        JsonObject json;
        try
        {
            // Strict: invalid UTF-8 is an error (not a silent U+FFFD in a module name), and so is a field given twice.
            var text = File.ReadAllText(configPath, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true));
            json = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject
                ?? throw new AdapterConfigException($"{configPath}: expected a JSON object.");
        }
        catch (JsonException e)
        {
            throw new AdapterConfigException($"{configPath}: not valid JSON ({e.Message}).");
        }
        catch (System.Text.DecoderFallbackException)
        {
            throw new AdapterConfigException($"{configPath}: not valid UTF-8 text; adapter_config.json is UTF-8 JSON (the file may be damaged).");
        }
        var config = MethodList.ConfigFromPeftJson(json, configPath);
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new AdapterConfigException($"{configPath}: {ErrorText.Plain(e)}");
        }
        return config;
    }

    static (string Config, string Weights) Paths(string directory)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"No adapter directory at {directory} (it should hold {ConfigFileName} and {WeightsFileName}).");
        var config = Path.Combine(directory, ConfigFileName);
        var weights = Path.Combine(directory, WeightsFileName);
        if (!File.Exists(config))
            throw new FileNotFoundException($"{directory} has no {ConfigFileName}; a PEFT adapter directory holds {ConfigFileName} and {WeightsFileName}.", config);
        if (!File.Exists(weights))
            throw new FileNotFoundException(File.Exists(Path.Combine(directory, "adapter_model.bin"))
                ? $"{directory} holds adapter_model.bin (a pickle); PeftSharp reads {WeightsFileName}: re-save it with safe_serialization=True."
                : $"{directory} has no {WeightsFileName}.", weights);
        return (config, weights);
    }

    internal static void Save(PeftModel peft, string adapterName, string directory, bool asPlainDelta)
    {
        var config = peft.Config(adapterName);
        using var scope = NewDisposeScope();
        var tensors = Tensors(peft, adapterName, asPlainDelta);

        // Both files change together (AdapterDirectoryCommit): never one save's weights with another's config.
        var weights = SafeTensors.Serialize(tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var configBytes = System.Text.Encoding.UTF8.GetBytes(ConfigJson.ToSortedJson(config.ToPeftJson(asPlainDelta)));
        AdapterDirectoryCommit.Replace(directory, [(WeightsFileName, weights), (ConfigFileName, stream => stream.Write(configBytes))]);
    }

    /// <summary>An adapter's tensors by file key, as <see cref="Save"/> writes them (the caller's dispose scope owns any
    /// tensor computed for the file, e.g. PiSSA's conversion).</summary>
    internal static SortedDictionary<string, Tensor> Tensors(PeftModel peft, string adapterName, bool asPlainDelta)
    {
        var tensors = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        var layers = peft.Layers.Where(l => l.Contains(adapterName)).ToList();
        foreach (var layer in layers)
            foreach (var (name, value) in layer[adapterName].TensorsForFile(asPlainDelta))
                tensors[KeyPrefix + layer.Path + "." + name] = value;
        foreach (var wrapper in peft.SavedModules.Where(w => w.Contains(adapterName)))
            foreach (var (name, parameter) in wrapper[adapterName].named_parameters())
                tensors[KeyPrefix + wrapper.Path + "." + name] = parameter;
        var parameters = peft.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var path in peft.TrainableBaseParameters(adapterName))
            tensors[KeyPrefix + path] = parameters[path];
        if (peft.ModelAdapters.TryGetValue(adapterName, out var modelAdapter))
            foreach (var (key, value) in modelAdapter.TensorsForFile())
                tensors[key] = value;
        return tensors;
    }

    /// <summary>Where an adapter's tensors come from: a safetensors file (its header is checked before any value is
    /// read) or tensors in memory (e.g. a merge of other adapters).</summary>
    internal abstract class TensorSource
    {
        /// <summary>How errors name the source: the file's path, or "the tensors given".</summary>
        public abstract string Name { get; }

        /// <summary>Key → (shape, dtype name, whether the dtype is floating point), known before any value is read.</summary>
        public abstract IReadOnlyDictionary<string, (long[] Shape, string DType, bool IsFloat)> Infos();

        /// <summary>The values; the caller disposes them when <see cref="OwnsValues"/>.</summary>
        public abstract Dictionary<string, Tensor> Values();

        public abstract bool OwnsValues { get; }
    }

    sealed class FileSource(string path) : TensorSource
    {
        public override string Name => path;

        public override IReadOnlyDictionary<string, (long[] Shape, string DType, bool IsFloat)> Infos() =>
            SafeTensors.ReadHeader(path).Tensors.ToDictionary(i => i.Name, i => (i.Shape, i.DType, SafeTensors.IsFloatingPoint(i.DType)));

        public override Dictionary<string, Tensor> Values() => SafeTensors.Load(path);

        public override bool OwnsValues => true;
    }

    internal sealed class MemorySource(IReadOnlyDictionary<string, Tensor> tensors) : TensorSource
    {
        public override string Name => "the tensors given";

        public override IReadOnlyDictionary<string, (long[] Shape, string DType, bool IsFloat)> Infos() =>
            tensors.ToDictionary(p => p.Key, p => (p.Value.shape, p.Value.dtype.ToString(), p.Value.is_floating_point()));

        public override Dictionary<string, Tensor> Values() => tensors.ToDictionary(p => p.Key, p => p.Value);

        public override bool OwnsValues => false;
    }

    /// <summary>The files of an adapter directory, which a save replaces together.</summary>
    internal static readonly IReadOnlyList<string> FileNames = [WeightsFileName, ConfigFileName];

    internal static void Load(PeftModel peft, string directory, string adapterName, bool allowNonFinite = false)
    {
        AdapterDirectoryCommit.Recover(directory, FileNames);   // a save that was interrupted: finish or undo it first
        var (configPath, weightsPath) = Paths(directory);
        var config = ReadConfig(directory);
        Attach(peft, adapterName, config, new FileSource(weightsPath), allowNonFinite, $"{configPath} does not fit this model");
    }

    /// <summary>
    /// The one path by which an adapter with given values goes into a model (a file, or tensors in memory): the config
    /// is checked against the model, every expected key, shape and dtype against the source, and the values for
    /// finiteness, all before the model changes; then the adapter is committed with those values.
    /// </summary>
    internal static void Attach(PeftModel peft, string adapterName, AdapterConfig config, TensorSource source, bool allowNonFinite, string misfit)
    {
        var weightsPath = source.Name;
        TargetSelection selection;
        ModelAdapter? modelAdapter;
        try
        {
            peft.CheckDependencies(config);
            selection = PeftModel.SelectTargets(peft.Model, config);
            modelAdapter = config.CreateModelAdapter(peft.Model, selection.Matched, initialize: false);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{misfit}: {ErrorText.Plain(e)}", e);
        }

        // A file saved without PEFT's conversion (init_lora_weights "pissa", "olora") holds A and B relative to a
        // residual base: as PEFT does, run the initialisation on this base again (it writes the residual when the adapter
        // is committed), then the file's values replace the fresh A and B.
        bool reinitialize = config.RewritesBase;
        Dictionary<string, AdapterModule> adapters;
        try
        {
            adapters = peft.CreateAdapters(config, selection.Matched, initialize: reinitialize, modelAdapter);
        }
        catch (ArgumentException e)
        {
            modelAdapter?.Dispose();
            throw new ArgumentException($"{misfit}: {ErrorText.Plain(e)}", e);
        }
        catch
        {
            modelAdapter?.Dispose();
            throw;
        }
        Dictionary<string, Tensor>? values = null;
        try
        {
            // Every tensor the model needs from the file, with the parameter it goes into.
            var expected = new Dictionary<string, (Tensor Target, string What)>();
            foreach (var (path, adapter) in adapters)
                foreach (var (name, tensor) in adapter.FileTensors())
                    expected[KeyPrefix + path + "." + name] = (tensor, $"{name} of '{path}' ({adapter.MethodName}, rank {adapter.Rank})");
            List<string> savedModulePaths;
            try
            {
                savedModulePaths = peft.ModulesToSavePaths(config);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"{misfit}: {ErrorText.Plain(e)}", e);
            }
            foreach (var path in savedModulePaths)
                foreach (var (name, parameter) in peft.BaseLayerAt(path).named_parameters())
                    expected[KeyPrefix + path + "." + name] = (parameter, $"{name} of modules_to_save '{path}'");
            // Base parameters the config trains and saves (LoRA bias modes), under the paths they will have once the
            // targets are wrapped ('<path>.bias' becomes '<path>.base_layer.bias', as in PEFT's keys).
            var modelParameters = peft.Model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
            var wrappedPaths = peft.BaseParameterPaths()
                .Where(p => !savedModulePaths.Any(s => p.StartsWith(s + ".", StringComparison.Ordinal)))
                .ToDictionary(p => WrappedPath(p, selection.Matched, peft), p => p);
            foreach (var path in config.TrainableBaseParameters(wrappedPaths.Keys, selection.Matched))
                expected[KeyPrefix + path] = (modelParameters[wrappedPaths[path]], $"base parameter '{path}'");
            if (modelAdapter is not null)
                foreach (var (key, parameter) in modelAdapter.FileParameters())
                    expected[key] = (parameter, $"{key} of the {modelAdapter.MethodName} adapter");

            var inFile = source.Infos();
            var missing = expected.Keys.Where(k => !inFile.ContainsKey(k)).ToList();
            if (missing.Count > 0)
                throw new AdapterFileException(
                    $"{weightsPath}: missing tensor '{missing[0]}' ({expected[missing[0]].What}, shape [{string.Join(", ", expected[missing[0]].Target.shape)}])" +
                    (missing.Count > 1 ? $" and {missing.Count - 1} more" : "") + $". The file has: {string.Join(", ", inFile.Keys.Take(4))}{(inFile.Count > 4 ? ", ..." : "")}.");
            var unexpected = inFile.Keys.Where(k => !expected.ContainsKey(k)).ToList();
            if (unexpected.Count > 0)
                throw new AdapterFileException(
                    $"{weightsPath}: tensor '{unexpected[0]}' does not belong to any module this adapter targets in the model" +
                    (unexpected.Count > 1 ? $" ({unexpected.Count - 1} more like it)" : "") +
                    $"; expected keys look like '{expected.Keys.FirstOrDefault() ?? "(none)"}'. Was the adapter trained on a model with other module names?");
            foreach (var (key, (target, what)) in expected)
            {
                var shape = inFile[key].Shape;
                if (!shape.SequenceEqual(target.shape))
                    throw new AdapterFileException(
                        $"{weightsPath}: tensor '{key}' has shape [{string.Join(", ", shape)}] but {what} needs [{string.Join(", ", target.shape)}].");
                if (target.is_floating_point() && !inFile[key].IsFloat)
                    throw new AdapterFileException(
                        $"{weightsPath}: tensor '{key}' has dtype {inFile[key].DType} but {what} is a {target.dtype} weight; expected a floating-point dtype (F32, F16, BF16 or F64).");
            }

            values = source.Values();
            if (!allowNonFinite) CheckFinite(weightsPath, values, expected.Keys);
            using (no_grad())
            {
                foreach (var (path, adapter) in adapters)
                    foreach (var (name, tensor) in adapter.FileTensors())
                        tensor.copy_(values[KeyPrefix + path + "." + name]);
                if (modelAdapter is not null)
                    foreach (var (key, parameter) in modelAdapter.FileParameters())
                        parameter.copy_(values[key]);
            }
        }
        catch
        {
            foreach (var a in adapters.Values) a.Dispose();
            modelAdapter?.Dispose();
            if (source.OwnsValues) DisposeAll(values);
            throw;
        }

        try
        {
            peft.Commit(adapterName, config, adapters, modelAdapter, initialize: reinitialize, afterAttach: copies =>
            {
                using var _ = no_grad();
                foreach (var (path, copy) in copies)
                    foreach (var (name, parameter) in copy.named_parameters())
                        parameter.copy_(values[KeyPrefix + path + "." + name]);
                var parameters = peft.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
                foreach (var path in peft.TrainableBaseParameters(adapterName))
                    parameters[path].copy_(values[KeyPrefix + path]);
            });
        }
        finally
        {
            if (source.OwnsValues) DisposeAll(values);
        }
    }

    // A base parameter's path once its layer is wrapped: '<target>.x' becomes '<target>.base_layer.x'.
    static string WrappedPath(string path, IReadOnlyList<string> targets, PeftModel peft)
    {
        foreach (var target in targets)
            if (path.StartsWith(target + ".", StringComparison.Ordinal) && ModuleSurgery.Get(peft.Model, target) is not AdapterLayer)
                return target + ".base_layer" + path[target.Length..];
        return path;
    }

    static void CheckFinite(string weightsPath, Dictionary<string, Tensor> values, IEnumerable<string> keys)
    {
        using var scope = NewDisposeScope();
        foreach (var key in keys)
        {
            var nonFinite = isfinite(values[key]).logical_not().sum().item<long>();
            if (nonFinite > 0)
                throw new AdapterFileException(
                    $"{weightsPath}: tensor '{key}' holds {nonFinite} NaN or infinite value(s) of {values[key].numel()}; the adapter is broken " +
                    "(check its training). Pass allowNonFinite: true to load it anyway.");
        }
    }

    static void DisposeAll(Dictionary<string, Tensor>? values)
    {
        if (values is null) return;
        foreach (var t in values.Values) t.Dispose();
    }
}

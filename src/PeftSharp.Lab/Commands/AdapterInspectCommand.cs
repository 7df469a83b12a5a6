using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;

namespace PeftSharp.Lab.Commands;

/// <summary><c>adapter inspect DIR [--json]</c>: what an adapter directory holds (the adapter in DIR and those in its
/// subfolders, as <c>PeftModel.Save</c> writes several adapters), and whether each is consistent. Everything it shows
/// comes from the method's own config (its declared fields, its inspection), so it knows every registered method.</summary>
static class AdapterInspectCommand
{
    // Fields every config writes that say nothing about this adapter.
    static readonly HashSet<string> Boilerplate = ["peft_type", "peft_version", "revision", "auto_mapping", "inference_mode"];

    public static int Run(Arguments arguments)
    {
        var directory = arguments.Next("inspect") ?? throw new ArgumentException("adapter inspect needs a directory: adapter inspect DIR [--json].");
        bool json = arguments.Flag("json");
        if (!Directory.Exists(directory))
            return Fail(json, directory, $"No adapter directory at {directory}.");
        var directories = new List<(string Name, string Path)>();
        if (File.Exists(Path.Combine(directory, AdapterFiles.ConfigFileName))) directories.Add((PeftModel.DefaultAdapterName, directory));
        foreach (var sub in Directory.EnumerateDirectories(directory).Order(StringComparer.Ordinal))
            if (File.Exists(Path.Combine(sub, AdapterFiles.ConfigFileName))) directories.Add((System.IO.Path.GetFileName(sub), sub));
        if (directories.Count == 0)
            return Fail(json, directory, $"{directory} holds no {AdapterFiles.ConfigFileName}, and neither does any subfolder: it is not a PEFT adapter directory.");

        var results = directories.Select(d => (d.Name, d.Path, Result: Inspect(d.Path))).ToList();
        bool valid = results.All(r => r.Result.Inspection?.IsValid == true);
        if (json)
        {
            var adapters = new JsonArray(results.Select(r => (JsonNode)Json(r.Name, r.Path, r.Result)).ToArray());
            // One adapter: its object, as before; several: the first (the directory's own, if any) with the others listed.
            var top = (JsonObject)adapters[0]!.DeepClone();
            if (results.Count > 1) top["adapters"] = adapters;
            top["all_valid"] = valid;
            Console.WriteLine(top.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        else
            foreach (var (name, path, result) in results) Print(name, path, result, results.Count > 1);
        return valid ? 0 : 1;
    }

    sealed record Outcome(AdapterInspection? Inspection, string? Error);

    static Outcome Inspect(string path)
    {
        try
        {
            return new Outcome(AdapterInspection.Read(path), null);
        }
        catch (Exception e) when (e is PeftSharp.IO.AdapterFileException or IOException or ArgumentException or InvalidDataException or UnauthorizedAccessException)
        {
            return new Outcome(null, e.Message);
        }
    }

    static int Fail(bool json, string directory, string message)
    {
        if (json) Console.WriteLine(new JsonObject { ["directory"] = directory, ["valid"] = false, ["all_valid"] = false, ["error"] = message }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        else Console.Error.WriteLine($"error: {message}");
        return 1;
    }

    static JsonObject Json(string name, string path, Outcome outcome)
    {
        if (outcome.Inspection is not { } inspection)
            return new JsonObject { ["name"] = name, ["directory"] = path, ["valid"] = false, ["error"] = outcome.Error };
        var config = inspection.Config.ToPeftJson(asPlainDelta: false);
        var json = new JsonObject
        {
            ["name"] = name,
            ["directory"] = inspection.Directory,
            ["peft_type"] = inspection.Config.PeftType,
            ["method"] = inspection.Method,
            ["ranks"] = new JsonArray(inspection.Ranks.Select(r => (JsonNode)r).ToArray()),
            ["parameters"] = inspection.Parameters,
            ["config"] = JsonNode.Parse(ConfigJson.ToSortedJson(config)),
            ["modules"] = new JsonArray(inspection.Modules.Select(m => (JsonNode)new JsonObject
            {
                ["path"] = m.Path, ["rank"] = m.Rank, ["parameters"] = m.Parameters, ["tensors"] = Tensors(m.Tensors),
            }).ToArray()),
            ["other_tensors"] = Tensors(inspection.OtherTensors),
            ["valid"] = inspection.IsValid,
            ["problems"] = new JsonArray(inspection.Problems.Select(p => (JsonNode)p).ToArray()),
        };
        // The fields scripts used before `config` existed, at the top level too.
        foreach (var field in new[] { "r", "lora_alpha", "use_rslora", "init_lora_weights", "target_modules", "modules_to_save", "feedforward_modules" })
            if (config.ContainsKey(field)) json[field] = config[field]?.DeepClone();
        return json;
    }

    static JsonArray Tensors(IEnumerable<PeftSharp.IO.SafeTensorInfo> tensors) =>
        new(tensors.Select(t => (JsonNode)new JsonObject
        {
            ["name"] = t.Name, ["dtype"] = t.DType, ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)s).ToArray()),
        }).ToArray());

    static void Print(string name, string path, Outcome outcome, bool several)
    {
        if (several) Console.WriteLine($"== adapter '{name}' ==");
        if (outcome.Inspection is not { } inspection)
        {
            Console.WriteLine($"adapter      {path}");
            Console.WriteLine($"valid: no");
            Console.WriteLine($"  - {outcome.Error}");
            Console.WriteLine();
            return;
        }
        Console.WriteLine($"adapter      {inspection.Directory}");
        Console.WriteLine($"method       {inspection.Method}");
        if (inspection.Ranks.Count > 0) Console.WriteLine($"ranks        in the file: {string.Join(", ", inspection.Ranks)}");
        if (inspection.Config.RewritesBase)
            Console.WriteLine($"note         saved without PEFT's conversion: loading re-runs the initialisation on the base weights, as PEFT does");
        Console.WriteLine($"parameters   {inspection.Parameters:N0} in {inspection.Modules.Count} modules");
        Console.WriteLine("config");
        foreach (var (field, value) in inspection.Config.ToPeftJson(asPlainDelta: false).OrderBy(p => p.Key, StringComparer.Ordinal))
            if (!Boilerplate.Contains(field) && value is not null && !(value is JsonObject { Count: 0 }))
                Console.WriteLine($"  {field,-28} {value.ToJsonString()}");
        Console.WriteLine();
        foreach (var module in inspection.Modules)
        {
            Console.WriteLine($"  {module.Path}  rank {module.Rank?.ToString() ?? "-"}  {module.Parameters:N0} params");
            foreach (var t in module.Tensors)
                Console.WriteLine($"      {t.Name[(AdapterFiles.KeyPrefix.Length + module.Path.Length + 1)..],-24} {t.DType,-4} [{string.Join(", ", t.Shape)}]");
        }
        foreach (var t in inspection.OtherTensors) Console.WriteLine($"  {t.Name}  {t.DType} [{string.Join(", ", t.Shape)}]");
        Console.WriteLine();
        if (inspection.IsValid) Console.WriteLine("valid: yes");
        else
        {
            Console.WriteLine("valid: no");
            foreach (var p in inspection.Problems) Console.WriteLine($"  - {p}");
        }
        Console.WriteLine();
    }
}

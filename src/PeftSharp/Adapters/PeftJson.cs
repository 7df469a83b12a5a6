using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Adapters;

/// <summary>A field of <c>adapter_config.json</c> that is missing, of the wrong type, or asks for something this library
/// does not do. The message names the file, the field and what would be right.</summary>
public sealed class AdapterConfigException(string message) : PeftSharp.IO.AdapterFileException(message);

/// <summary>Reading and writing the fields every PEFT config shares, with errors that name file and field.</summary>
public static class PeftJson
{
    public static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, IndentSize = 2 };

    /// <summary>Writes the shared fields of <paramref name="config"/> into <paramref name="json"/>.</summary>
    public static void WriteCommon(JsonObject json, AdapterConfig config)
    {
        json["peft_type"] = config.PeftType;
        json["task_type"] = config.TaskType;
        json["base_model_name_or_path"] = config.BaseModelNameOrPath;
        json["revision"] = null;
        json["auto_mapping"] = null;
        json["inference_mode"] = true;
        // The PEFT release whose file format this library writes (PEFT compares it with its own version on load).
        json["peft_version"] = "0.20.0";
        json["target_modules"] = Targets(config.TargetModules);
        json["exclude_modules"] = Targets(config.ExcludeModules);
        json["layers_to_transform"] = config.LayersToTransform is null ? null : new JsonArray(config.LayersToTransform.Select(i => (JsonNode)i).ToArray());
        json["layers_pattern"] = config.LayersPattern switch
        {
            null => null,
            [var one] => one,
            var many => new JsonArray(many.Select(p => (JsonNode)p).ToArray()),
        };
        json["modules_to_save"] = config.ModulesToSave is null ? null : new JsonArray(config.ModulesToSave.Select(m => (JsonNode)m).ToArray());
    }

    /// <summary>A target list as PEFT writes it: a regex string, a list of names, or null.</summary>
    public static JsonNode? Targets(TargetModules? targets) => targets switch
    {
        null => null,
        { Pattern: { } pattern } => pattern,
        { Names: { } names } => new JsonArray(names.Select(n => (JsonNode)n).ToArray()),
        _ => null,
    };

    /// <summary>Keys sorted as PEFT writes them (<c>json.dumps(..., sort_keys=True, indent=2)</c>).</summary>
    public static string ToSortedJson(JsonObject json)
    {
        var sorted = new JsonObject();
        foreach (var (key, value) in json.OrderBy(p => p.Key, StringComparer.Ordinal))
            sorted[key] = value?.DeepClone();
        return sorted.ToJsonString(Indented);
    }

    /// <summary>Reads the shared fields of a PEFT config into <paramref name="config"/>.</summary>
    public static T ReadCommon<T>(T config, JsonObject json, string file) where T : AdapterConfig =>
        config with
        {
            TargetModules = ReadTargets(json, "target_modules", file),
            ExcludeModules = ReadTargets(json, "exclude_modules", file),
            LayersToTransform = json["layers_to_transform"] switch
            {
                null => null,
                JsonArray a => a.Select(n => Get<int>(n, file, "layers_to_transform")).ToArray(),
                var n => [Get<int>(n, file, "layers_to_transform")],
            },
            LayersPattern = json["layers_pattern"] switch
            {
                null => null,
                JsonArray a => a.Select(n => Get<string>(n, file, "layers_pattern")).ToArray(),
                var n => [Get<string>(n, file, "layers_pattern")],
            },
            ModulesToSave = json["modules_to_save"] switch
            {
                null => null,
                JsonArray a => a.Select(n => Get<string>(n, file, "modules_to_save")).ToArray(),
                _ => throw new AdapterConfigException($"{file}: modules_to_save must be a list of module names or null."),
            },
            TaskType = json["task_type"] is null ? null : Get<string>(json["task_type"], file, "task_type"),
            BaseModelNameOrPath = json["base_model_name_or_path"] is null ? null : Get<string>(json["base_model_name_or_path"], file, "base_model_name_or_path"),
        };

    /// <summary>Reads a target-list field (<c>target_modules</c>, <c>feedforward_modules</c>, ...): names, a regex, or null.</summary>
    public static TargetModules? ReadTargets(JsonObject json, string field, string file) => json[field] switch
    {
        null => null,
        JsonArray a when a.Count == 0 => null,
        JsonArray a => TargetModules.List(a.Select(n => Get<string>(n, file, field))),
        JsonValue v when v.TryGetValue<string>(out var s) => s.StartsWith('{') ? TargetModules.List(ParsePythonSet(s)) : TargetModules.Regex(s),
        _ => throw new AdapterConfigException($"{file}: {field} must be a list of module names, a regex string, or null."),
    };

    // Some writers store a Python set's repr ("{'q', 'v'}"); read it as a list.
    static IEnumerable<string> ParsePythonSet(string text) =>
        text.Trim('{', '}').Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => s.Trim('\'', '"'));

    /// <summary>A required or optional field of a given type; throws naming the file and field otherwise.</summary>
    public static T Get<T>(JsonNode? node, string file, string field)
    {
        if (node is JsonValue value)
        {
            if (value.TryGetValue<T>(out var result)) return result;
            // JSON numbers: accept 8 for a double field and 8.0 for an int field when it is whole.
            if (typeof(T) == typeof(double) && value.TryGetValue<long>(out var l)) return (T)(object)(double)l;
            if (typeof(T) == typeof(int) && value.TryGetValue<double>(out var d) && d == Math.Floor(d)) return (T)(object)(int)d;
        }
        throw new AdapterConfigException($"{file}: field '{field}' should be {TypeName(typeof(T))} but is {node?.ToJsonString() ?? "missing"}.");
    }

    public static T GetOr<T>(JsonObject json, string field, T fallback, string file) =>
        json[field] is null ? fallback : Get<T>(json[field], file, field);

    public static Dictionary<string, T> GetMap<T>(JsonObject json, string field, string file)
    {
        if (json[field] is null) return [];
        if (json[field] is not JsonObject map)
            throw new AdapterConfigException($"{file}: field '{field}' should be an object of module name to value.");
        return map.ToDictionary(p => p.Key, p => Get<T>(p.Value, file, $"{field}.{p.Key}"));
    }

    static string TypeName(Type t) =>
        t == typeof(int) ? "an integer" : t == typeof(double) ? "a number" : t == typeof(bool) ? "true or false" : t == typeof(string) ? "a string" : t.Name;
}

using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace PeftSharp.Adapters;

/// <summary>A field of <c>adapter_config.json</c> that is missing, of the wrong type, or asks for something this library
/// does not do. The message names the file, the field and what would be right.</summary>
public sealed class AdapterConfigException(string message) : PeftSharp.IO.AdapterFileException(message);

/// <summary>
/// A config's <c>adapter_config.json</c> object, written and read by System.Text.Json from the config's own
/// declaration: every settable property is a field under its <c>[JsonPropertyName]</c> (PEFT's name), computed
/// properties are not, and a method adds what is not a hyperparameter (constants PEFT writes at their defaults, fields
/// with a layout of their own) in <see cref="AdapterConfig.WriteFixedFields"/> / <see cref="AdapterConfig.ReadFixedFields"/>.
/// Numbers of type double are written as Python writes floats (<c>0.0</c>, <c>8.0</c>, <c>1e-05</c>), so PEFT reads the
/// file back with the same types.
/// </summary>
public static class ConfigJson
{
    /// <summary>The PEFT release whose file format this library writes (PEFT compares it with its own version on load).</summary>
    public const string PeftVersion = "0.20.0";

    static readonly JsonSerializerOptions Options = CreateOptions();

    static JsonSerializerOptions CreateOptions()
    {
        var options = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            TypeInfoResolver = new DefaultJsonTypeInfoResolver { Modifiers = { OnlyHyperparameters } },
            Converters = { new PythonFloatConverter(), new LenientIntConverter(), new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower, allowIntegerValues: false) },
        };
        options.MakeReadOnly();
        return options;
    }

    // A config's JSON fields are its settable properties (hyperparameters); get-only properties (MethodName, PeftType,
    // helpers such as IsShared) are not written and never read.
    static void OnlyHyperparameters(JsonTypeInfo info)
    {
        if (info.Kind != JsonTypeInfoKind.Object || !typeof(AdapterConfig).IsAssignableFrom(info.Type)) return;
        for (int i = info.Properties.Count - 1; i >= 0; i--)
            if (info.Properties[i].Set is null && info.Properties[i].AttributeProvider?.IsDefined(typeof(JsonIncludeAttribute), true) != true)
                info.Properties.RemoveAt(i);
    }

    /// <summary>The JSON fields of a config type with the property type each reads into.</summary>
    public static IReadOnlyDictionary<string, Type> Fields(Type configType) =>
        Options.GetTypeInfo(configType).Properties.ToDictionary(p => p.Name, p => p.PropertyType);

    /// <summary>The JSON name of the property <paramref name="propertyName"/> of <paramref name="configType"/>.</summary>
    public static string FieldName(Type configType, string propertyName) =>
        Options.GetTypeInfo(configType).Properties.FirstOrDefault(p => (p.AttributeProvider as PropertyInfo)?.Name == propertyName)?.Name
        ?? JsonNamingPolicy.SnakeCaseLower.ConvertName(propertyName);

    /// <summary><paramref name="config"/> as PEFT's <c>adapter_config.json</c> object.</summary>
    public static JsonObject Write(AdapterConfig config)
    {
        var json = (JsonObject)JsonSerializer.SerializeToNode(config, config.GetType(), Options)!;
        foreach (var field in config.OmittedCommonFields) json.Remove(field);
        json["peft_type"] = config.PeftType;
        json["revision"] = null;
        json["auto_mapping"] = null;
        json["inference_mode"] = true;
        json["peft_version"] = PeftVersion;
        config.WriteFixedFields(json);
        return json;
    }

    /// <summary>Reads a config of <paramref name="configType"/> from <paramref name="json"/>; unknown fields are ignored (as
    /// PEFT's own loader does with fields of newer versions), a field of the wrong type is an error naming
    /// <paramref name="file"/>, the field and what it should be.</summary>
    public static AdapterConfig Read(JsonObject json, Type configType, string file)
    {
        var fields = Fields(configType);
        var known = new JsonObject();
        foreach (var (name, value) in json)
        {
            if (!fields.TryGetValue(name, out var type)) continue;
            // PEFT writes null for an unset field; for a field that cannot be null here that means "the default".
            if (value is null && type.IsValueType && Nullable.GetUnderlyingType(type) is null) continue;
            known[name] = value?.DeepClone();
        }
        AdapterConfig config;
        try
        {
            config = (AdapterConfig)known.Deserialize(configType, Options)!;
        }
        catch (JsonException e)
        {
            var field = FieldOf(e.Path);
            var expected = fields.TryGetValue(field, out var type) ? Expectation(type) : "of another type";
            throw new AdapterConfigException($"{file}: field '{field}' should be {expected} but is {json[field]?.ToJsonString() ?? "null"}.");
        }
        return config.ReadFixedFields(json, file);
    }

    /// <summary>A float as Python writes it (<c>1.0</c>, <c>1e-05</c>), for fields a method writes itself.</summary>
    public static JsonNode Float(double value) => JsonNode.Parse(PythonFloatConverter.Format(value))!;

    /// <summary>Keys sorted as PEFT writes them (<c>json.dumps(..., sort_keys=True, indent=2)</c>).</summary>
    public static string ToSortedJson(JsonObject json)
    {
        var sorted = new JsonObject();
        foreach (var (key, value) in json.OrderBy(p => p.Key, StringComparer.Ordinal))
            sorted[key] = value?.DeepClone();
        return sorted.ToJsonString(new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 });
    }

    // "$.target_modules[0]" → "target_modules".
    static string FieldOf(string? path)
    {
        if (string.IsNullOrEmpty(path)) return "(top level)";
        var field = path.StartsWith("$.", StringComparison.Ordinal) ? path[2..] : path.TrimStart('$');
        if (field.StartsWith("['", StringComparison.Ordinal)) field = field[2..field.IndexOf('\'', 2)];
        int end = field.IndexOfAny(['.', '[']);
        return end < 0 ? field : field[..end];
    }

    /// <summary>What a field of <paramref name="type"/> holds, for error messages.</summary>
    public static string Expectation(Type type)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (type == typeof(int) || type == typeof(long)) return "an integer";
        if (type == typeof(double)) return "a number";
        if (type == typeof(bool)) return "true or false";
        if (type == typeof(string)) return "a string";
        if (type == typeof(TargetModules)) return "a list of module names, a regex string, or null";
        if (type.IsEnum) return "one of " + string.Join(", ", EnumNames(type).Select(n => $"\"{n}\""));
        if (typeof(System.Collections.IDictionary).IsAssignableFrom(type) || type.Name.Contains("Dictionary")) return "an object of module name to value";
        if (typeof(System.Collections.IEnumerable).IsAssignableFrom(type)) return "a list";
        return "a " + type.Name;
    }

    /// <summary>An enum's names as the file and the options write them (<c>[JsonStringEnumMemberName]</c>, else snake case).</summary>
    public static IEnumerable<string> EnumNames(Type enumType) =>
        enumType.GetFields(BindingFlags.Public | BindingFlags.Static).Select(f =>
            f.GetCustomAttribute<JsonStringEnumMemberNameAttribute>()?.Name ?? JsonNamingPolicy.SnakeCaseLower.ConvertName(f.Name));

    /// <summary>Writes doubles as Python's <c>json.dumps</c> writes floats: always with a decimal point or an exponent.</summary>
    sealed class PythonFloatConverter : JsonConverter<double>
    {
        public override double Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.Number ? reader.GetDouble() : throw new JsonException("a number");

        public override void Write(Utf8JsonWriter writer, double value, JsonSerializerOptions options) =>
            writer.WriteRawValue(Format(value), skipInputValidation: true);

        public static string Format(double d)
        {
            if (double.IsNaN(d)) return "NaN";
            if (double.IsInfinity(d)) return d > 0 ? "Infinity" : "-Infinity";
            if (d == Math.Floor(d) && Math.Abs(d) < 1e16) return d.ToString("0.0", CultureInfo.InvariantCulture);
            var text = d.ToString("R", CultureInfo.InvariantCulture);
            int e = text.IndexOf('E');
            if (e < 0) return text;
            int exponent = int.Parse(text[(e + 1)..], CultureInfo.InvariantCulture);
            return $"{text[..e]}e{(exponent < 0 ? '-' : '+')}{Math.Abs(exponent):00}";
        }
    }

    /// <summary>Integers, also when a writer stored a whole number as a float (<c>8.0</c>).</summary>
    sealed class LenientIntConverter : JsonConverter<int>
    {
        public override int Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            if (reader.TokenType != JsonTokenType.Number) throw new JsonException("an integer");
            if (reader.TryGetInt32(out var i)) return i;
            double d = reader.GetDouble();
            return d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue ? (int)d : throw new JsonException("an integer");
        }

        public override void Write(Utf8JsonWriter writer, int value, JsonSerializerOptions options) => writer.WriteNumberValue(value);
    }
}

/// <summary>PEFT's <c>target_modules</c> and similar fields: a list of names, a regex string (or a Python set's repr, which
/// some writers store), or null; an empty list reads as null.</summary>
public sealed class TargetModulesJsonConverter : JsonConverter<TargetModules?>
{
    public override TargetModules? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.String:
                var text = reader.GetString()!;
                if (string.IsNullOrWhiteSpace(text)) throw new JsonException("a non-empty regex");
                return text.StartsWith('{') ? TargetModules.List(ParsePythonSet(text)) : TargetModules.Regex(text);
            case JsonTokenType.StartArray:
                var names = new List<string>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                    names.Add(reader.TokenType == JsonTokenType.String && reader.GetString() is { Length: > 0 } name && !string.IsNullOrWhiteSpace(name)
                        ? name : throw new JsonException("module names"));
                return names.Count == 0 ? null : TargetModules.List(names);
            default:
                throw new JsonException("a list of module names or a regex");
        }
    }

    public override void Write(Utf8JsonWriter writer, TargetModules? value, JsonSerializerOptions options)
    {
        if (value is null) writer.WriteNullValue();
        else if (value.Pattern is { } pattern) writer.WriteStringValue(pattern);
        else JsonSerializer.Serialize(writer, value.Names, options);
    }

    // "{'q', 'v'}" → q, v.
    static IEnumerable<string> ParsePythonSet(string text) =>
        text.Trim('{', '}').Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => s.Trim('\'', '"'));
}

/// <summary>A field PEFT writes as one string or a list of strings (<c>layers_pattern</c>).</summary>
public sealed class StringOrListJsonConverter : JsonConverter<IReadOnlyList<string>?>
{
    public override IReadOnlyList<string>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String) return [reader.GetString()!];
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("a string or a list of strings");
        var list = new List<string>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            list.Add(reader.TokenType == JsonTokenType.String ? reader.GetString()! : throw new JsonException("strings"));
        return list;
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<string>? value, JsonSerializerOptions options)
    {
        if (value is null) writer.WriteNullValue();
        else if (value.Count == 1) writer.WriteStringValue(value[0]);
        else JsonSerializer.Serialize(writer, value.ToArray(), options);
    }
}

/// <summary>A field PEFT writes as one integer or a list of integers (<c>layers_to_transform</c>).</summary>
public sealed class IntOrListJsonConverter : JsonConverter<IReadOnlyList<int>?>
{
    public override IReadOnlyList<int>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Number) return [JsonSerializer.Deserialize<int>(ref reader, options)];
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("an integer or a list of integers");
        var list = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            list.Add(reader.TokenType == JsonTokenType.Number ? JsonSerializer.Deserialize<int>(ref reader, options) : throw new JsonException("integers"));
        return list;
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<int>? value, JsonSerializerOptions options)
    {
        if (value is null) writer.WriteNullValue();
        else JsonSerializer.Serialize(writer, value.ToArray(), options);
    }
}

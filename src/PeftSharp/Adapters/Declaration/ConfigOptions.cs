using System.Globalization;
using System.Reflection;
using PeftSharp.Methods;

namespace PeftSharp.Adapters;

/// <summary>
/// The <c>[Option]</c> properties of a config: listed as <see cref="MethodParameter"/>s (help, completions, the
/// <c>methods</c> listing), bound from command-line style options (<c>--rank 8</c>), and range-checked in
/// <see cref="AdapterConfig.Validate"/>. Everything comes from the property's declaration; nothing here knows a method.
/// </summary>
public static class ConfigOptions
{
    /// <summary>A declared option: the property and its attribute.</summary>
    public sealed record Declared(PropertyInfo Property, OptionAttribute Option)
    {
        public Type ValueType => Nullable.GetUnderlyingType(Property.PropertyType) ?? Property.PropertyType;
    }

    /// <summary>The options of a config type, in declaration order (base class first).</summary>
    public static IReadOnlyList<Declared> Of(Type configType) =>
        configType.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Select(p => (Property: p, Option: p.GetCustomAttribute<OptionAttribute>(true)))
            .Where(p => p.Option is not null)
            .OrderBy(p => Depth(p.Property.DeclaringType))   // the base record's options first, then the method's own
            .ThenBy(p => p.Property.MetadataToken)
            .Select(p => new Declared(p.Property, p.Option!))
            .ToList();

    static int Depth(Type? type) => type is null ? 0 : 1 + Depth(type.BaseType);

    /// <summary>The parameters of a method whose preset is <paramref name="preset"/>, with the preset's values as defaults.</summary>
    public static IReadOnlyList<MethodParameter> Parameters(AdapterConfig preset) =>
        Of(preset.GetType()).Select(d => new MethodParameter(
            d.Option.Name, TypeName(d.ValueType), preset.DefaultText(d.Option.Name) ?? Text(d.Property.GetValue(preset)),
            d.Option.Help + Range(d.Option), ConfigJson.FieldName(preset.GetType(), d.Property.Name),
            d.ValueType.IsEnum ? ConfigJson.EnumNames(d.ValueType).ToList() : preset.Choices(d.Option.Name))).ToList();

    /// <summary>
    /// A copy of <paramref name="preset"/> with <paramref name="options"/> (option name → text) applied. Unknown options
    /// and unreadable values throw <see cref="ArgumentException"/> naming the option and listing this method's options.
    /// </summary>
    public static AdapterConfig Bind(AdapterConfig preset, IReadOnlyDictionary<string, string> options, string method)
    {
        var declared = Of(preset.GetType()).ToDictionary(d => d.Option.Name);
        var unknown = options.Keys.Where(k => !declared.ContainsKey(k)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"{method} has no option {string.Join(", ", unknown.Select(u => "--" + u))}; its options: " +
                                        (declared.Count == 0 ? "none" : string.Join(", ", declared.Keys.Select(k => "--" + k))) + ".");
        var config = preset.Copy();
        foreach (var (name, text) in options)
        {
            var d = declared[name];
            object? value;
            try
            {
                value = Parse(d.Property.PropertyType, text, preset);
            }
            catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
            {
                throw new ArgumentException($"--{name} needs {Expectation(d, preset)} ({d.Option.Help}), not '{text}'.", name);
            }
            d.Property.SetValue(config, value);
        }
        return config.AfterBinding(options);
    }

    /// <summary>Checks every declared option of <paramref name="config"/> against its range, and every number for being
    /// finite; throws <see cref="ArgumentOutOfRangeException"/> naming the PEFT field, the option and the valid range.</summary>
    public static void ValidateRanges(AdapterConfig config)
    {
        foreach (var d in Of(config.GetType()))
        {
            double value;
            switch (d.Property.GetValue(config))
            {
                case int i: value = i; break;
                case double x: value = x; break;
                default: continue;
            }
            var o = d.Option;
            bool ok = double.IsFinite(value)
                && (double.IsNaN(o.Min) || (o.MinExclusive ? value > o.Min : value >= o.Min))
                && (double.IsNaN(o.Max) || (o.MaxExclusive ? value < o.Max : value <= o.Max));
            if (!ok)
                throw new ArgumentOutOfRangeException(d.Property.Name, value,
                    $"{ConfigJson.FieldName(config.GetType(), d.Property.Name)} (--{o.Name}) is {value.ToString(CultureInfo.InvariantCulture)}; it must be a finite number{Range(o)}: {o.Help}.");
        }
    }

    static string Range(OptionAttribute o)
    {
        bool min = !double.IsNaN(o.Min), max = !double.IsNaN(o.Max);
        string Num(double v) => v.ToString(CultureInfo.InvariantCulture);
        if (min && max) return $" in {(o.MinExclusive ? "(" : "[")}{Num(o.Min)}, {Num(o.Max)}{(o.MaxExclusive ? ")" : "]")}";
        if (min) return $" {(o.MinExclusive ? ">" : "≥")} {Num(o.Min)}";
        if (max) return $" {(o.MaxExclusive ? "<" : "≤")} {Num(o.Max)}";
        return "";
    }

    static object? Parse(Type type, string text, AdapterConfig preset)
    {
        var inner = Nullable.GetUnderlyingType(type) ?? type;
        if (Nullable.GetUnderlyingType(type) is not null && text.Length == 0) return null;
        if (inner == typeof(int)) return int.Parse(text, NumberStyles.Integer, CultureInfo.InvariantCulture);
        if (inner == typeof(double)) return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
        if (inner == typeof(bool)) return text.Length == 0 || bool.Parse(text);
        if (inner == typeof(string)) return text;
        if (inner == typeof(TargetModules)) return text.Length == 0 ? null : TargetModules.List(SplitList(text));
        if (inner == typeof(IReadOnlyList<string>)) return SplitList(text);
        if (inner.IsEnum)
        {
            var names = ConfigJson.EnumNames(inner).ToList();
            int index = names.FindIndex(n => string.Equals(n, text, StringComparison.OrdinalIgnoreCase));
            if (index < 0) throw new FormatException();
            return Enum.GetValues(inner).GetValue(index);
        }
        return preset.ParseOption(inner, text) ?? throw new FormatException();
    }

    static string[] SplitList(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    static string Expectation(Declared d, AdapterConfig preset)
    {
        var t = d.ValueType;
        if (t == typeof(int)) return "a whole number";
        if (t == typeof(double)) return "a number";
        if (t == typeof(bool)) return "true or false";
        if (t.IsEnum) return "one of " + string.Join(", ", ConfigJson.EnumNames(t));
        if (preset.Choices(d.Option.Name) is { Count: > 0 } choices) return "one of " + string.Join(", ", choices);
        return "a comma-separated list";
    }

    /// <summary>The option type as help shows it: int, float, bool, string, list or choice.</summary>
    public static string TypeName(Type type) =>
        type == typeof(int) ? "int" : type == typeof(double) ? "float" : type == typeof(bool) ? "bool" : type.IsEnum ? "choice"
        : type == typeof(TargetModules) || type == typeof(IReadOnlyList<string>) ? "list" : "string";

    static string Text(object? value) => value switch
    {
        null => "",
        double d => d.ToString(CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        Enum e => ConfigJson.EnumNames(e.GetType()).ElementAt(Array.IndexOf(Enum.GetValues(e.GetType()), e)),
        IReadOnlyList<string> list => string.Join(",", list),
        var other => Convert.ToString(other, CultureInfo.InvariantCulture) ?? "",
    };
}

namespace PeftSharp.Adapters;

/// <summary>
/// Declares a config property as a hyperparameter a user sets from <c>#!peft attach</c> or the Lab: its option name
/// (<c>--rank</c>), its help text and its valid range. With the property's <c>[JsonPropertyName]</c> (its PEFT field), type
/// and default (the method's preset), this one declaration drives the JSON file, option binding, range validation,
/// completions and the <c>methods</c> listing (see <see cref="ConfigOptions"/> and <see cref="ConfigJson"/>).
/// </summary>
[AttributeUsage(AttributeTargets.Property, Inherited = true)]
public sealed class OptionAttribute(string name, string help) : Attribute
{
    /// <summary>The option's name without dashes, e.g. "rank".</summary>
    public string Name { get; } = name;

    public string Help { get; } = help;

    /// <summary>The smallest valid value (numbers only; NaN: no lower bound).</summary>
    public double Min { get; init; } = double.NaN;

    /// <summary>The largest valid value (numbers only; NaN: no upper bound). Sizes carry a sane cap, so that a typo or
    /// a corrupted file cannot ask the allocator for gigabytes before anything else is checked.</summary>
    public double Max { get; init; } = double.NaN;

    /// <summary>The lower bound itself is not valid (e.g. a reduction factor must be above 0).</summary>
    public bool MinExclusive { get; init; }

    /// <summary>The upper bound itself is not valid (e.g. a dropout probability must be below 1).</summary>
    public bool MaxExclusive { get; init; }
}

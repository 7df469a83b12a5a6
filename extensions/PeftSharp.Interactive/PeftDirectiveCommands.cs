using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.DotNet.Interactive.Commands;

namespace PeftSharp.Interactive;

/// <summary>
/// A <c>#!peft</c> subcommand as the kernel hands it over: the parameters arrive as JSON properties named after them
/// (<c>--rank</c> → <c>rank</c>) and are kept as written, so the handler can say exactly which value is wrong.
/// </summary>
public abstract class PeftDirectiveCommand : KernelDirectiveCommand
{
    /// <summary>Every parameter given (and every flag, true or false), by its camelCase name.</summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Arguments { get; set; }

    /// <summary>The text of parameter <paramref name="name"/> (e.g. "rank" for --rank), or null when it was not given.</summary>
    public string? Text(string name)
    {
        if (Arguments is null || !Arguments.TryGetValue(CamelCase(name), out var value)) return null;
        var text = value.ValueKind switch
        {
            JsonValueKind.String => value.GetString(),
            JsonValueKind.Null or JsonValueKind.Undefined => null,
            JsonValueKind.True => "true",
            JsonValueKind.False => null,
            _ => value.GetRawText(),
        };
        return string.IsNullOrWhiteSpace(text) ? null : text.Trim();
    }

    /// <summary>True when flag <paramref name="name"/> was given.</summary>
    public bool Flag(string name) =>
        Arguments is not null && Arguments.TryGetValue(CamelCase(name), out var value) &&
        (value.ValueKind == JsonValueKind.True || (value.ValueKind == JsonValueKind.String && bool.TryParse(value.GetString(), out var b) && b));

    /// <summary>The required parameter <paramref name="name"/>, or an error saying what to write.</summary>
    public string Required(string name, string example) =>
        Text(name) ?? throw new ArgumentException($"--{name} is required, e.g. --{name} {example}.");

    /// <summary>How .NET Interactive names a --kebab-case parameter in the command's JSON (camelCase).</summary>
    public static string CamelCase(string name)
    {
        var parts = name.TrimStart('-').Split('-', StringSplitOptions.RemoveEmptyEntries);
        return string.Concat(parts.Select((p, i) => i == 0 ? p : char.ToUpper(p[0], CultureInfo.InvariantCulture) + p[1..]));
    }
}

// One type per subcommand: the kernel finds a subcommand's handler by the command's type name.
public sealed class PeftAttach : PeftDirectiveCommand;
public sealed class PeftSummary : PeftDirectiveCommand;
public sealed class PeftTargets : PeftDirectiveCommand;
public sealed class PeftMerge : PeftDirectiveCommand;
public sealed class PeftUnmerge : PeftDirectiveCommand;
public sealed class PeftSave : PeftDirectiveCommand;
public sealed class PeftLoad : PeftDirectiveCommand;
public sealed class PeftSpectrum : PeftDirectiveCommand;
public sealed class PeftRanks : PeftDirectiveCommand;
public sealed class PeftRouting : PeftDirectiveCommand;
public sealed class PeftProfile : PeftDirectiveCommand;
public sealed class PeftMethods : PeftDirectiveCommand;

using System.Globalization;
using System.Text.Json.Nodes;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;

namespace PeftSharp.Methods;

/// <summary>One hyperparameter of a method, as the CLI, the magic commands and the docs show it.</summary>
public sealed record MethodParameter(string Name, string Type, string Default, string Description);

/// <summary>A method the library has: its name, family, what it computes, whether it merges, its parameters, and how to
/// make its config from command-line style options.</summary>
public sealed record MethodInfo(
    string Name,
    string Family,
    string Formula,
    string Papers,
    bool CanMerge,
    IReadOnlyList<MethodParameter> Parameters,
    Func<TargetModules, IReadOnlyDictionary<string, string>, AdapterConfig> CreateConfig);

/// <summary>
/// The one place a method is announced: the CLI's <c>methods</c>, the notebook commands and completions, and the file
/// reader (<c>peft_type</c> to config) all read this list. Adding a method = its config and layer + an entry here.
/// </summary>
public static class MethodList
{
    static readonly MethodParameter[] LoraParameters =
    [
        new("rank", "int", "8", "r: the rank of B A"),
        new("alpha", "float", "rank", "lora_alpha: scale s = alpha / r"),
        new("dropout", "float", "0", "lora_dropout on the adapter input"),
        new("rslora", "bool", "false", "use_rslora: s = alpha / sqrt(r)"),
        new("init", "string", "true", "init_lora_weights: true | false | gaussian | pissa | pissa_niter_N | olora"),
        new("bias", "string", "none", "none | all | lora_only: which biases train"),
    ];

    public static IReadOnlyList<MethodInfo> All { get; } =
    [
        new("lora", "LowRank", "y = W x + s·B A x, A Kaiming-uniform, B = 0", "Hu et al. 2021 (LoRA); Kalajdzievski 2023 (rsLoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options)),
        new("dora", "LowRank", "W' = m·(W + s·B A) / ||W + s·B A||_row", "Liu et al. 2024 (DoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { UseDora = true }),
        new("pissa", "LowRank", "B A = top-r SVD of W, base keeps W - s·B A", "Meng et al. 2024 (PiSSA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { InitLoraWeights = LoraInit.Parse(Option(options, "init", "pissa")) }),
        new("olora", "LowRank", "B A = first r columns/rows of QR(W), base keeps the residual", "Büyükakyüz 2024 (OLoRA)", true,
            LoraParameters, (targets, options) => Lora(targets, options) with { InitLoraWeights = LoraInit.Olora }),
    ];

    /// <summary>PEFT <c>peft_type</c> → reader of that config from <c>adapter_config.json</c>.</summary>
    static readonly Dictionary<string, Func<JsonObject, string, AdapterConfig>> Readers = new()
    {
        ["LORA"] = LoraConfig.FromPeftJson,
    };

    public static IReadOnlyCollection<string> PeftTypes => Readers.Keys;

    /// <summary>The method named <paramref name="name"/> (case-insensitive); throws listing the known names.</summary>
    public static MethodInfo Find(string name) =>
        All.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown method '{name}'. Methods: {string.Join(", ", All.Select(m => m.Name))}.", nameof(name));

    /// <summary>Reads a config object of any method this library reads, dispatching on <c>peft_type</c>.</summary>
    public static AdapterConfig ConfigFromPeftJson(JsonObject json, string file)
    {
        var peftType = json["peft_type"] is JsonValue v && v.TryGetValue<string>(out var t) ? t
            : throw new AdapterConfigException($"{file}: no peft_type; a PEFT adapter_config.json names its method there (e.g. \"LORA\").");
        return Readers.TryGetValue(peftType, out var read) ? read(json, file)
            : throw new AdapterConfigException($"{file}: peft_type '{peftType}' is not one PeftSharp reads; it reads {string.Join(", ", Readers.Keys)}.");
    }

    static LoraConfig Lora(TargetModules targets, IReadOnlyDictionary<string, string> options)
    {
        var known = LoraParameters.Select(p => p.Name).ToHashSet();
        var unknown = options.Keys.Where(k => !known.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Unknown LoRA option(s) {string.Join(", ", unknown)}; options: {string.Join(", ", known)}.");
        int rank = int.Parse(Option(options, "rank", "8"), CultureInfo.InvariantCulture);
        return new LoraConfig
        {
            TargetModules = targets,
            R = rank,
            LoraAlpha = double.Parse(Option(options, "alpha", rank.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture),
            LoraDropout = double.Parse(Option(options, "dropout", "0"), CultureInfo.InvariantCulture),
            UseRslora = bool.Parse(Option(options, "rslora", "false")),
            InitLoraWeights = LoraInit.Parse(Option(options, "init", "true")),
            Bias = Option(options, "bias", "none"),
        };
    }

    static string Option(IReadOnlyDictionary<string, string> options, string name, string fallback) =>
        options.TryGetValue(name, out var value) ? value : fallback;
}

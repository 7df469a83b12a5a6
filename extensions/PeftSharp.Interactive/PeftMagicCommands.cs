using System.Globalization;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.CSharp;
using Microsoft.DotNet.Interactive.Directives;
using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.IO;
using PeftSharp.Methods;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch.nn;

namespace PeftSharp.Interactive;

/// <summary>
/// The <c>#!peft</c> magic command and its subcommands on a C# kernel. Each handler fetches variables from the kernel,
/// makes one library call and displays the result; a mistake (unknown variable or method, a rank that does not fit,
/// a pattern that matches nothing, a wrong file) fails the cell with a message naming what was wrong and what would be
/// right, and the kernel goes on working.
/// </summary>
public sealed class PeftMagicCommands
{
    public const string DirectiveName = "#!peft";

    /// <summary>The subcommands, in the order <c>#!peft</c>'s help lists them.</summary>
    public static IReadOnlyList<string> Subcommands { get; } =
        ["attach", "summary", "targets", "merge", "unmerge", "save", "load", "spectrum", "ranks", "routing", "profile", "methods"];

    readonly CSharpKernel _kernel;

    PeftMagicCommands(CSharpKernel kernel) => _kernel = kernel;

    /// <summary>Adds <c>#!peft</c> to <paramref name="kernel"/> (once).</summary>
    public static void Register(CSharpKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        if (kernel.KernelInfo.SupportedDirectives.Any(d => d.Name == DirectiveName)) return;
        new PeftMagicCommands(kernel).RegisterAll();
    }

    void RegisterAll()
    {
        var root = new KernelActionDirective(DirectiveName)
        {
            Description = "PeftSharp: attach adapters, inspect, merge, save/load, and chart spectra, ranks and routing. Subcommands: " + string.Join(", ", Subcommands),
        };
        // Completions after `--` on an attach line: the chosen method's own options (the parser knows only the union).
        _kernel.AddMiddleware(async (command, context, next) =>
        {
            if (command is Microsoft.DotNet.Interactive.Commands.RequestCompletions request && LineAt(request.Code, request.LinePosition) is { } line
                && CompleteAttach(line, request.LinePosition.Character) is { } completion)
            {
                var (items, start) = completion;
                var span = new LinePositionSpan(new LinePosition(request.LinePosition.Line, start), request.LinePosition);
                context.Publish(new Microsoft.DotNet.Interactive.Events.CompletionsProduced(
                    items.Select(i => new Microsoft.DotNet.Interactive.Events.CompletionItem(i.Text, "Property", documentation: i.Help)).ToList(), request, span));
                return;
            }
            await next(command, context);
        });
        // `#!peft` alone shows the subcommands and their parameters.
        _kernel.AddDirective(root, (command, context) =>
        {
            // The kernel routes an unknown subcommand without parameters (#!peft lora) here: say so instead of the help.
            if (DirectiveInput.UnknownSubcommand(command, Words, Subcommands) is { } unknown)
            {
                if (!Mistake.Capture(unknown)) context.Fail(command, message: unknown);
                return Task.CompletedTask;
            }
            Show(context, HtmlViews.DirectiveHelp(root));
            return Task.CompletedTask;
        });

        Add<PeftAttach>(root, "attach", "Attach an adapter to a model variable", Attach,
            [Model("the model (a TorchSharp module) to adapt"), Method(), P("--targets", "modules to adapt: names 'q,v', 're:<regex>' or 'all-linear'"),
             P("--name", "adapter name (default 'default')"), P("--as", "variable that receives the adapted model (default 'peft')"),
             P("--calibration", "variable holding what a method needs before it attaches: input batches (a Tensor or a list of Tensors; corda) or an Action that runs the model on a few batches (spt: calling backward() on each batch's loss)"),
             .. MethodOptions()]);
        Add<PeftSummary>(root, "summary", "Per layer: method, rank, parameters, merged or not, active adapters", Summary, [Model("the adapted model")]);
        Add<PeftTargets>(root, "targets", "Preview which modules a target pattern matches (changes nothing)", Targets,
            [Model("the model"), P("--targets", "names 'q,v', 're:<regex>' or 'all-linear'"), Method()]);
        Add<PeftMerge>(root, "merge", "Fold adapters into the base weights", Merge,
            [Model("the adapted model"), P("--adapters", "adapters to merge, 'a,b' (default: the active ones)"), Flag("--safe", "check for NaN/Inf before writing")]);
        Add<PeftUnmerge>(root, "unmerge", "Restore the base weights", Unmerge, [Model("the adapted model")]);
        Add<PeftSave>(root, "save", "Save adapters in Hugging Face PEFT's format", Save,
            [Model("the adapted model"), P("--path", "directory to write adapter_config.json + adapter_model.safetensors into")]);
        Add<PeftLoad>(root, "load", "Load a PEFT adapter directory into a model", Load,
            [Model("the model to load into"), P("--path", "adapter directory"), P("--name", "adapter name (default 'default')"),
             P("--as", "variable that receives the adapted model (default 'peft')"), Flag("--trainable", "make the loaded adapter trainable")]);
        Add<PeftSpectrum>(root, "spectrum", "Singular spectrum of a layer's weight, adapter delta, full fine-tuning delta or Kronecker rearrangement", Spectrum,
            [Model("the model"), Layer(), P("--of", "delta (default for an adapted model) | weight | adapted | full-delta (needs --reference) | kronecker").AddCompletions(() => SpectrumSources),
             P("--adapter", "adapter name (default: the first active)"),
             P("--reference", "for --of full-delta: variable holding the model before fine-tuning").AddCompletions(() => ModelVariables().Select(v => v.Name)),
             P("--grid", "for --of kronecker: the block grid m1xn1 of W = Σ A_k ⊗ B_k, A_k m1 x n1 (default: balanced divisors)"),
             P("--energy", "mark the rank holding this share of the energy, and the elbow, e.g. 0.99").AddCompletions(() => ["0.9", "0.95", "0.99"])]);
        Add<PeftRanks>(root, "ranks", "Rank allocation across layers", Ranks, [Model("the adapted model"), P("--adapter", "adapter name (default: the first active)")]);
        Add<PeftRouting>(root, "routing", "Routing weights (token/task x expert) per layer", Routing,
            [Model("the adapted model"), P("--weights", "a variable holding a RoutingWeights record instead")]);
        Add<PeftProfile>(root, "profile", "Where a training step's time and memory go, per module and phase", Profile,
            [Model("the model to profile (adapted or not)"), P("--loss", "variable holding a Func<Tensor> that runs the model on one batch and returns the loss").AddCompletions(() => LossVariables()),
             P("--steps", "steps measured (default 3), after one warm-up step").AddCompletions(() => ["1", "3", "5"]),
             P("--title", "what the profile shows (default: the model variable's name)")]);
        Add<PeftMethods>(root, "methods", "List the methods and their parameters", Methods, [Method()]);
    }

    void Add<T>(KernelActionDirective root, string name, string description, Func<T, KernelInvocationContext, Task> handler, KernelDirectiveParameter[] parameters)
        where T : PeftDirectiveCommand
    {
        var directive = new KernelActionDirective(name) { Description = description };
        foreach (var p in parameters) directive.Parameters.Add(p);
        root.Subcommands.Add(directive);
        _kernel.AddDirective<T>(directive, async (command, context) =>
        {
            try
            {
                CheckParameterNames(command, directive);
                await handler(command, context);
            }
            catch (Exception e) when (IsUsageError(e))
            {
                var message = $"#!peft {name}: {UserMessage(e)}";
                if (!Mistake.Capture(message)) context.Fail(command, message: message);   // Mistake.Show displays it instead
            }
        });
    }

    // The kernel's parser does not flag an unknown --name after a subcommand (it drops it), so a typo such as --rnk
    // would be silently ignored. Read the directive's text (kept on the command) and name the unknown parameter.
    static readonly System.Reflection.PropertyInfo? DirectiveNodeProperty =
        typeof(Microsoft.DotNet.Interactive.Commands.KernelDirectiveCommand).GetProperty("DirectiveNode", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic);

    static void CheckParameterNames(PeftDirectiveCommand command, KernelActionDirective directive)
    {
        var node = DirectiveNodeProperty?.GetValue(command);
        var text = node?.GetType().GetProperty("Text")?.GetValue(node) as string;
        if (text is null) return;
        DirectiveInput.CheckQuotes(text);
        var known = directive.Parameters.Select(p => p.Name).ToHashSet();
        foreach (var word in Words(text).Where(w => w.StartsWith("--", StringComparison.Ordinal) && !known.Contains(w)))
        {
            var closest = known.OrderBy(k => TargetMatcher.Levenshtein(k, word)).First();
            throw new ArgumentException($"unknown parameter '{word}'{(TargetMatcher.Levenshtein(closest, word) <= 3 ? $" (did you mean {closest}?)" : "")}; {directive.Name} takes {string.Join(", ", known)}.");
        }
        DirectiveInput.CheckValues(Words(text).ToList(), directive);
    }

    // Whitespace-separated words, a double-quoted run counting as one word (so a quoted value may hold "--").
    static IEnumerable<string> Words(string text)
    {
        var word = new System.Text.StringBuilder();
        bool quoted = false;
        foreach (var c in text)
        {
            if (c == '"') quoted = !quoted;
            if (char.IsWhiteSpace(c) && !quoted)
            {
                if (word.Length > 0) yield return word.ToString();
                word.Clear();
            }
            else word.Append(c);
        }
        if (word.Length > 0) yield return word.ToString();
    }

    /// <summary>An exception's message without the lines .NET appends for programmers ("(Parameter 'x')",
    /// "Actual value was y."): the message already names the parameter and the value.</summary>
    internal static string UserMessage(Exception e) => ErrorText.Plain(e);

    /// <summary>Errors that mean "the input was wrong": shown as a message, never as a stack trace.</summary>
    static bool IsUsageError(Exception e) =>
        e is ArgumentException or InvalidOperationException or IOException or NotSupportedException or FormatException
            or KeyNotFoundException or UnauthorizedAccessException or AdapterFileException;

    static KernelDirectiveParameter P(string name, string description) => new(name, description);

    static KernelDirectiveParameter Flag(string name, string description) => new(name, description) { Flag = true };

    KernelDirectiveParameter Model(string what) => P("--model", $"variable holding {what}").AddCompletions(() => ModelVariables().Select(v => v.Name));

    static KernelDirectiveParameter Method() =>
        P("--method", "method name: " + string.Join(", ", MethodList.All.Select(m => m.Name))).AddCompletions(() => MethodList.All.Select(m => m.Name));

    KernelDirectiveParameter Layer() =>
        P("--layer", "module path, e.g. layers.0.attn.q (default: every adapter layer)").AddCompletions(() =>
            ModelVariables().Select(v => v.Value).OfType<PeftModel>().SelectMany(p => p.Layers.Select(l => l.Path)).Distinct());

    // The kernel's parser needs every option any method takes declared on `attach` (booleans as flags); what each one
    // means depends on the method, so the help lists it per method, values are bound and checked by the chosen method
    // alone (ConfigOptions.Bind refuses another method's option), and completions after `--` offer only the chosen
    // method's options (see CompleteMethodOptions).
    static IEnumerable<KernelDirectiveParameter> MethodOptions() =>
        MethodList.All.SelectMany(m => m.Parameters.Select(p => (Method: m.Name, Parameter: p))).GroupBy(x => x.Parameter.Name)
            .Select(g =>
            {
                var meanings = g.GroupBy(x => $"{x.Parameter.Description} ({x.Parameter.Type}, default {x.Parameter.Default})")
                    .Select(m => $"{string.Join("/", m.Select(x => x.Method))}: {m.Key}");
                var help = string.Join("; ", meanings);
                return g.All(x => x.Parameter.Type == "bool") ? Flag("--" + g.Key, help) : P("--" + g.Key, help);
            });

    /// <summary>The parameters of <c>#!peft attach</c> that do not belong to a method.</summary>
    static readonly string[] AttachParameters = ["--model", "--method", "--targets", "--name", "--as", "--calibration"];

    static readonly string[] SpectrumSources = ["delta", "weight", "adapted", "full-delta", "kronecker"];

    /// <summary>
    /// Completions for a <c>#!peft attach</c> line: after <c>--</c>, the attach parameters and the options of the method the
    /// line names (LoRA if none yet), each with its help; after an option that takes one of a closed list of values,
    /// those values, with the column where the word they replace starts. Other requests (null) go on to the kernel's own
    /// completions.
    /// </summary>
    internal static (IReadOnlyList<(string Text, string Help)> Items, int Start)? CompleteAttach(string line, int column)
    {
        var words = Words(line[..Math.Min(column, line.Length)]).ToList();
        // The kernel may hand over the line without its trailing blank: a cursor past the end starts a new word.
        bool atNewWord = column == 0 || column > line.Length || char.IsWhiteSpace(line[column - 1]);
        if (words.Count < 2 || words[0] != DirectiveName || words[1] != "attach") return null;
        var current = atNewWord ? "" : words[^1];
        var previous = atNewWord ? words[^1] : words.Count >= 2 ? words[^2] : "";
        int methodAt = words.IndexOf("--method");
        var methodName = methodAt >= 0 && methodAt + 1 < words.Count && words[methodAt + 1] != current ? words[methodAt + 1] : "lora";
        var method = MethodList.All.FirstOrDefault(m => string.Equals(m.Name, methodName, StringComparison.OrdinalIgnoreCase));
        if (method is null) return null;
        int start = column - current.Length;
        if (current.StartsWith('-'))
            return (AttachParameters.Select(p => (p, "#!peft attach"))
                .Concat(method.Parameters.Select(p => ("--" + p.Name, $"{method.Name}: {p.Description} ({p.Type}, default {p.Default})")))
                .Where(c => c.Item1.StartsWith(current, StringComparison.Ordinal)).ToList(), start);
        if (previous.StartsWith("--", StringComparison.Ordinal) && method.Parameters.FirstOrDefault(p => "--" + p.Name == previous) is { Choices: { Count: > 0 } choices } parameter)
            return (choices.Where(c => c.StartsWith(current, StringComparison.OrdinalIgnoreCase)).Select(c => (c, $"{method.Name} --{parameter.Name}")).ToList(), start);
        return null;
    }

    static string? LineAt(string code, LinePosition position)
    {
        var lines = code.Split('\n');
        return position.Line < lines.Length ? lines[position.Line].TrimEnd('\r') : null;
    }

    // ---- handlers ----

    async Task Attach(PeftAttach command, KernelInvocationContext context)
    {
        VariableNames.Check(command.Text("as") ?? "peft");   // before anything changes: a bad name would orphan the adapter
        var (modelName, value) = Variable(command);
        var module = AsModule(modelName, value);
        var method = MethodList.Find(command.Text("method") ?? "lora");
        var config = CreateConfig(command, method, MethodOptions(command, method));
        config.Validate();
        var selection = PeftModel.PreviewTargets(module, config);
        var adapterName = command.Text("name") ?? PeftModel.DefaultAdapterName;
        // Prompts and prefixes go into the model's hooks, not into layers.
        var where = config.TargetsLayers ? $"{selection.Matched.Count} layer(s) of '{modelName}'" : $"the prompt hooks of '{modelName}'";

        var calibrate = Calibration(command, config, method, module);
        var existing = value as PeftModel ?? FindPeftModel(module);
        if (existing is not null)
        {
            existing.AddAdapter(adapterName, config, calibrate);
            Show(context, HtmlViews.Note($"Added adapter '{adapterName}' ({method.Name}) to {where}. " +
                                         $"Active adapters stay {string.Join(", ", existing.ActiveAdapters)}: call SetActiveAdapters(\"{adapterName}\") to train it.") +
                                HtmlViews.PeftModel(existing));
            return;
        }
        var peft = PeftModel.Create(module, config, adapterName, calibrate);
        var variable = command.Text("as") ?? "peft";
        await _kernel.SetValueAsync(variable, peft, typeof(PeftModel));
        Show(context, HtmlViews.Note($"Attached {method.Name} '{adapterName}' to {where}; the variable '{variable}' holds the adapted model.") +
                      HtmlViews.PeftModel(peft));
    }

    // --calibration names the data a method needs before it attaches: input batches (a Tensor or a list of Tensors, which
    // the model runs on: CorDA's covariance), or an Action that runs the model itself (SPT: and calls backward() on each
    // batch's loss, since it measures gradients).
    Action? Calibration(PeftDirectiveCommand command, AdapterConfig config, MethodInfo method, Module module)
    {
        var name = command.Text("calibration");
        if (!config.NeedsCalibration && !config.NeedsGradientCalibration)
            return name is null ? null : throw new ArgumentException($"{method.Name} needs no calibration data; leave out --calibration.");
        const string ActionExample = "Action calib = () => { foreach (var (x, y) in batches) loss(model.call(x), y).backward(); };";
        if (name is null)
            throw new ArgumentException(config.NeedsGradientCalibration
                ? $"{method.Name} measures gradients before it attaches: give --calibration <variable>, a variable holding an Action that runs the model on a few batches and calls backward() on each batch's loss, e.g. {ActionExample}"
                : $"{method.Name} initialises from the covariance of each target's inputs: give --calibration <variable>, a Tensor or a list of Tensors of model inputs (e.g. var batches = new[] {{ torch.randn(8, 16) }};), or an Action that runs the model on them.");
        if (!_kernel.TryGetValue<object>(name, out var value))
            throw new ArgumentException($"No variable '{name}' in the C# kernel; --calibration names a variable holding {(config.NeedsGradientCalibration ? "an Action" : "input batches (a Tensor or a list of Tensors) or an Action")}.");
        if (value is Action action) return action;
        if (config.NeedsGradientCalibration)
            throw new ArgumentException($"'{name}' is a {value?.GetType().Name ?? "null"}; {method.Name} needs --calibration to name a variable holding an Action that calls backward() on each batch's loss, e.g. {ActionExample}");
        IReadOnlyList<torch.Tensor> batches = value switch
        {
            torch.Tensor t => [t],
            IEnumerable<torch.Tensor> list => list.ToList(),
            _ => throw new ArgumentException($"'{name}' is a {value?.GetType().Name ?? "null"}; --calibration needs a Tensor or a list of Tensors of model inputs, or an Action."),
        };
        if (batches.Count == 0) throw new ArgumentException($"'{name}' holds no batches; give at least one input Tensor.");
        if (module is not Module<torch.Tensor, torch.Tensor> callable)
            throw new ArgumentException($"The model is a {module.GetType().Name}, which does not take a Tensor; give an Action that runs it, or calibrate in C# with PeftModel.Create(model, config, calibrate: ...).");
        return () => { foreach (var batch in batches) callable.call(batch).Dispose(); };
    }

    Task Summary(PeftSummary command, KernelInvocationContext context)
    {
        Show(context, HtmlViews.PeftModel(RequirePeft(command)));
        return Task.CompletedTask;
    }

    Task Targets(PeftTargets command, KernelInvocationContext context)
    {
        var (name, value) = Variable(command);
        var module = AsModule(name, value);
        var method = MethodList.Find(command.Text("method") ?? "lora");
        var config = CreateConfig(command, method, new Dictionary<string, string>());
        if (!config.TargetsLayers)
            throw new ArgumentException($"{method.Name} adapts no layer (it plugs into the model's prompt hooks), so there are no targets to preview.");
        Show(context, HtmlViews.TargetSelection(PeftModel.PreviewTargets(module, config), command.Text("targets") ?? $"{method.Name}'s default"));
        return Task.CompletedTask;
    }

    Task Merge(PeftMerge command, KernelInvocationContext context)
    {
        var peft = RequirePeft(command);
        var adapters = command.Text("adapters")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (adapters is { Length: 0 })
            throw new ArgumentException($"--adapters '{command.Text("adapters")}' names no adapter; give names such as {string.Join(",", peft.AdapterNames)}, or leave it out to merge the active ones.");
        peft.Merge(adapters, command.Flag("safe"));
        Show(context, HtmlViews.Note($"Merged {(adapters is null ? "the active adapters" : string.Join(", ", adapters))} into the base weights; #!peft unmerge restores them.") + HtmlViews.PeftModel(peft));
        return Task.CompletedTask;
    }

    Task Unmerge(PeftUnmerge command, KernelInvocationContext context)
    {
        var peft = RequirePeft(command);
        peft.Unmerge();
        Show(context, HtmlViews.Note("Restored the base weights.") + HtmlViews.PeftModel(peft));
        return Task.CompletedTask;
    }

    Task Save(PeftSave command, KernelInvocationContext context)
    {
        var peft = RequirePeft(command);
        var path = Path.GetFullPath(command.Required("path", "out/my-adapter"));
        peft.Save(path);
        var inspection = AdapterInspection.Read(path);
        Show(context, HtmlViews.Note($"Saved adapter(s) {string.Join(", ", peft.AdapterNames)} to {path}: {AdapterFiles.ConfigFileName} ({inspection.Config.PeftType}) and " +
                                     $"{AdapterFiles.WeightsFileName} ({inspection.Modules.Count} modules, {inspection.Parameters:N0} parameters, " +
                                     $"{HtmlViews.Bytes(new FileInfo(Path.Combine(path, AdapterFiles.WeightsFileName)).Length)})."));
        return Task.CompletedTask;
    }

    async Task Load(PeftLoad command, KernelInvocationContext context)
    {
        VariableNames.Check(command.Text("as") ?? "peft");   // before anything changes: a bad name would orphan the adapter
        var (name, value) = Variable(command);
        var module = AsModule(name, value);
        var path = Path.GetFullPath(command.Required("path", "out/my-adapter"));
        var adapterName = command.Text("name") ?? PeftModel.DefaultAdapterName;
        var existing = value as PeftModel ?? FindPeftModel(module);
        if (existing is not null)
        {
            existing.LoadAdapter(path, adapterName, command.Flag("trainable"));
            Show(context, HtmlViews.Note($"Loaded {path} into '{name}' as adapter '{adapterName}'.") + HtmlViews.PeftModel(existing));
            return;
        }
        var peft = PeftModel.Load(module, path, adapterName, command.Flag("trainable"));
        var variable = command.Text("as") ?? "peft";
        await _kernel.SetValueAsync(variable, peft, typeof(PeftModel));
        Show(context, HtmlViews.Note($"Loaded {path} into '{name}' as adapter '{adapterName}'; the variable '{variable}' holds the adapted model.") + HtmlViews.PeftModel(peft));
    }

    Task Spectrum(PeftSpectrum command, KernelInvocationContext context)
    {
        var (name, value) = Variable(command);
        var module = AsModule(name, value);
        var peft = value as PeftModel ?? FindPeftModel(module);
        var of = (command.Text("of") ?? (peft is null ? "weight" : "delta")).ToLowerInvariant();
        var layer = command.Text("layer");
        var adapter = command.Text("adapter");
        if (!SpectrumSources.Contains(of))
            throw new ArgumentException($"--of '{of}' is not a spectrum source; use delta, weight, adapted, full-delta or kronecker.");
        if (of is "delta" or "adapted" && peft is null)
            throw new ArgumentException($"'{name}' has no adapters, so it has no {of} spectrum; use --of weight, or attach an adapter first.");
        double? energy = null;
        if (command.Text("energy") is { } energyText)
            energy = double.TryParse(energyText, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var e) && e > 0 && e <= 1 ? e
                : throw new ArgumentException($"--energy '{energyText}' is not a share of the energy; give a number in (0, 1], e.g. 0.99.");
        Module? reference = null;
        if (of == "full-delta")
        {
            var referenceName = command.Text("reference")
                ?? throw new ArgumentException("--of full-delta compares the model with a copy from before fine-tuning: give --reference <variable>.");
            reference = _kernel.TryGetValue<object>(referenceName, out var referenceValue) ? AsModule(referenceName, referenceValue)
                : throw new ArgumentException($"No variable '{referenceName}' in the C# kernel; --reference names the model before fine-tuning.");
        }
        else if (command.Text("reference") is not null) throw new ArgumentException("--reference is for --of full-delta only.");
        if (of != "kronecker" && command.Text("grid") is not null) throw new ArgumentException("--grid is for --of kronecker only.");
        var layers = layer is not null ? [layer]
            : peft?.Layers.Select(l => l.Path).ToList() ?? throw new ArgumentException($"--layer is required for a model without adapters, e.g. --layer {FirstLinear(module)}.");
        var spectra = layers.Select(l => of switch
        {
            "delta" => SingularSpectrum.OfDelta(peft!, l, adapter),
            "adapted" => SingularSpectrum.OfAdapted(peft!, l, adapter),
            "full-delta" => SingularSpectrum.OfFullDelta(module, reference!, l),
            "kronecker" => Kronecker(module, l, command.Text("grid")),
            _ => SingularSpectrum.OfWeight(module, l),
        }).ToList();
        Show(context, string.Join("\n", spectra.Select(s => HtmlViews.Spectrum(s, energy))));
        return Task.CompletedTask;
    }

    // The Kronecker spectrum of a layer's base weight on an m1 x n1 grid of blocks (--grid, else balanced divisors).
    static SingularSpectrum Kronecker(Module model, string layer, string? grid)
    {
        var weight = SingularSpectrum.OfWeight(model, layer);   // checks the layer and reads its shape
        if (weight.Shape.Count != 2) throw new ArgumentException($"'{layer}' has a weight of shape [{string.Join(", ", weight.Shape)}]; the Kronecker spectrum needs a matrix.");
        long rows = weight.Shape[0], cols = weight.Shape[1];
        int m1 = KroneckerSpectrum.BalancedFactor(rows), n1 = KroneckerSpectrum.BalancedFactor(cols);
        if (grid is not null)
        {
            var parts = grid.ToLowerInvariant().Split('x');
            if (parts.Length != 2 || !int.TryParse(parts[0], out m1) || !int.TryParse(parts[1], out n1) || m1 < 1 || n1 < 1 || rows % m1 != 0 || cols % n1 != 0)
                throw new ArgumentException($"--grid '{grid}' is not a block grid of '{layer}' ({rows} x {cols}): give m1xn1 with m1 dividing {rows} and n1 dividing {cols}, e.g. {KroneckerSpectrum.BalancedFactor(rows)}x{KroneckerSpectrum.BalancedFactor(cols)}.");
        }
        var module = FindModuleWeight(model, layer);
        return KroneckerSpectrum.Of(module, m1, n1, layer);
    }

    static torch.Tensor FindModuleWeight(Module model, string layer)
    {
        var module = model.named_modules().First(m => m.name == layer).module;
        var baseModule = module is AdapterLayer adapted ? adapted.BaseLayer : module;
        return baseModule.get_parameter("weight")!;
    }

    Task Ranks(PeftRanks command, KernelInvocationContext context)
    {
        Show(context, HtmlViews.RankAllocation(RankAllocation.Of(RequirePeft(command), command.Text("adapter"))));
        return Task.CompletedTask;
    }

    Task Routing(PeftRouting command, KernelInvocationContext context)
    {
        if (command.Text("weights") is { } weightsName)
        {
            if (!_kernel.TryGetValue<object>(weightsName, out var weights))
                throw new ArgumentException($"No variable '{weightsName}' in the C# kernel.");
            Show(context, HtmlViews.Routing(weights as RoutingWeights
                ?? throw new ArgumentException($"'{weightsName}' is a {weights?.GetType().Name ?? "null"}, not a RoutingWeights record.")));
            return Task.CompletedTask;
        }
        Show(context, HtmlViews.Routing(RoutingWeights.Collect(RequirePeft(command))));
        return Task.CompletedTask;
    }

    // A profile runs real steps on the model with AdamW at learning rate 0, so the weights stay as they were.
    Task Profile(PeftProfile command, KernelInvocationContext context)
    {
        var (modelName, value) = Variable(command);
        var module = AsModule(modelName, value);
        const string LossExample = "Func<Tensor> loss = () => torch.nn.functional.mse_loss(model.call(x), y);";
        var lossName = command.Required("loss", LossVariables().FirstOrDefault() ?? "loss");
        if (!_kernel.TryGetValue<object>(lossName, out var loss))
            throw new ArgumentException($"No variable '{lossName}' in the C# kernel; --loss names a variable holding a Func<Tensor> that returns one batch's loss, e.g. {LossExample}");
        var lossFunction = loss as Func<torch.Tensor>
            ?? throw new ArgumentException($"'{lossName}' is a {loss?.GetType().Name ?? "null"}; --loss needs a Func<Tensor> that returns one batch's loss, e.g. {LossExample}");
        var stepsText = command.Text("steps");
        int steps = stepsText is null ? 3
            : int.TryParse(stepsText, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n is >= 1 and <= 100 ? n
            : throw new ArgumentException($"--steps '{stepsText}' is not a number of steps; give a whole number from 1 to 100, e.g. --steps 3.");
        var profile = TrainingProfile.Measure(module, lossFunction, steps, title: command.Text("title") ?? modelName);
        Show(context, HtmlViews.Profile(profile));
        return Task.CompletedTask;
    }

    // Variables a --loss can name: functions returning a tensor.
    IEnumerable<string> LossVariables()
    {
        var variables = _kernel.ScriptState?.Variables;
        if (variables is null) return [];
        return Enumerable.Reverse<Microsoft.CodeAnalysis.Scripting.ScriptVariable>(variables).Where(v => v.Value is Func<torch.Tensor>).Select(v => v.Name).Distinct();
    }

    Task Methods(PeftMethods command, KernelInvocationContext context)
    {
        var methods = command.Text("method") is { } name ? [MethodList.Find(name)] : MethodList.All;
        Show(context, HtmlViews.Methods(methods));
        return Task.CompletedTask;
    }

    // ---- helpers ----

    static void Show(KernelInvocationContext context, string html) =>
        KernelInvocationContextExtensions.Display(context, new PeftHtml(html), HtmlFormatter.MimeType);

    // Every method option given on the line, by name; the chosen method binds them (its config's declaration says
    // what each means and which values are valid) and refuses options of other methods.
    static Dictionary<string, string> MethodOptions(PeftDirectiveCommand command, MethodInfo method)
    {
        var options = new Dictionary<string, string>();
        var own = method.Parameters.ToDictionary(p => p.Name);
        foreach (var name in MethodList.All.SelectMany(m => m.Parameters).Select(p => p.Name).Distinct())
        {
            bool isFlag = own.TryGetValue(name, out var parameter) ? parameter.Type == "bool" : false;
            if (isFlag)
            {
                if (command.Flag(name)) options[name] = "true";
            }
            else if (command.Text(name) is { } text) options[name] = text;
            else if (!own.ContainsKey(name) && command.Flag(name)) options[name] = "true";
        }
        return options;
    }

    // --targets, or the method's own default (Pfeiffer's placement, BitFit's every bias; prompts and prefixes take none);
    // a method without a default asks for --targets.
    static AdapterConfig CreateConfig(PeftDirectiveCommand command, MethodInfo method, IReadOnlyDictionary<string, string> options)
    {
        var targetsText = command.Text("targets");
        var config = method.CreateConfig(targetsText is null ? null : TargetModules.Parse(targetsText), options);
        if (config.TargetsLayers && config.TargetModules is null)
            throw new ArgumentException($"--targets is required for {method.Name}, e.g. --targets q,v (names), 're:<regex>' or all-linear.");
        if (!config.TargetsLayers && targetsText is not null)
            throw new ArgumentException($"{method.Name} adapts no layer (it plugs into the model's prompt hooks); leave out --targets.");
        return config;
    }

    (string Name, object? Value) Variable(PeftDirectiveCommand command)
    {
        var name = command.Required("model", ModelVariables().Select(v => v.Name).FirstOrDefault() ?? "model");
        if (!_kernel.TryGetValue<object>(name, out var value))
        {
            var models = ModelVariables().Select(v => v.Name).ToList();
            throw new ArgumentException($"No variable '{name}' in the C# kernel. Variables holding models: {(models.Count == 0 ? "none yet (create one, e.g. var model = new Mlp();)" : string.Join(", ", models))}.");
        }
        return (name, value);
    }

    static Module AsModule(string name, object? value) => value switch
    {
        PeftModel peft => peft.Model,
        Module module => module,
        _ => throw new ArgumentException($"'{name}' is a {value?.GetType().Name ?? "null"}, not a model: --model names a variable holding a TorchSharp module or a PeftModel."),
    };

    PeftModel RequirePeft(PeftDirectiveCommand command)
    {
        var (name, value) = Variable(command);
        if (value is PeftModel peft) return peft;
        var module = AsModule(name, value);
        return FindPeftModel(module) ?? throw new ArgumentException(
            $"'{name}' has no adapters yet; attach one first, e.g. #!peft attach --model {name} --method lora --targets {FirstLinear(module)} --rank 4.");
    }

    // A PeftModel variable whose model is this module (so --model can name either).
    PeftModel? FindPeftModel(Module module) =>
        ModelVariables().Select(v => v.Value).OfType<PeftModel>().LastOrDefault(p => ReferenceEquals(p.Model, module));

    IEnumerable<(string Name, object Value)> ModelVariables()
    {
        var variables = _kernel.ScriptState?.Variables;
        if (variables is null) yield break;
        var seen = new HashSet<string>();
        foreach (var v in Enumerable.Reverse<Microsoft.CodeAnalysis.Scripting.ScriptVariable>(variables))
            if (seen.Add(v.Name) && v.Value is PeftModel or Module)
                yield return (v.Name, v.Value);
    }

    static string FirstLinear(Module module) =>
        TargetMatcher.AdaptableModules(module).FirstOrDefault(m => m.Module is TorchSharp.Modules.Linear).Path ?? "<layer path>";
}

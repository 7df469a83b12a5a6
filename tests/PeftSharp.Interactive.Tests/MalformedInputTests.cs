using System.Diagnostics;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.Events;
using Xunit.Abstractions;

namespace PeftSharp.Interactive.Tests;

/// <summary>
/// Input a person mistypes: every malformed <c>#!peft</c> command must fail with a message (no stack trace) and leave
/// the kernel working and the models unchanged.
/// </summary>
public sealed class MalformedInputTests(ITestOutputHelper output)
{
    const string Setup = """
        torch.manual_seed(0);
        var model = new Mlp(16, 32, 8);
        var other = new Mlp(16, 32, 8);
        var text = "hi"; var number = 42; var x = torch.randn(4, 16);
        var routing = new RoutingWeights([new RoutingLayer("lin0", ["a"], ["e0", "e1"], [[0.5, 0.5]])], "task");
        """;

    [Theory]
    [InlineData("1abc", "starts with a digit")]
    [InlineData("class", "C# keyword")]
    [InlineData("a.b", "holds '.'")]
    [InlineData("await", "contextual keyword")]
    [InlineData("_", "discard")]
    [InlineData("peft-2", "holds '-'")]
    public async Task Attach_and_load_refuse_a_variable_name_CSharp_cannot_declare_before_changing_anything(string name, string why)
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(Setup);
        var message = await k.Fails($"#!peft attach --model model --method lora --targets lin0 --rank 2 --as {name}");
        Assert.Contains($"--as '{name}'", message);
        Assert.Contains(why, message);
        Assert.Contains("nothing was changed", message);
        Assert.DoesNotContain("   at ", message);
        // The model was not wrapped: it still has no adapters, so a good name works afterwards.
        Assert.Contains("no adapters yet", await k.Fails("#!peft summary --model model"));
        Assert.Contains("--as", await k.Fails($"#!peft load --model model --path /nonexistent --as {name}"));
        Assert.Contains("Attached lora", await k.Ok("#!peft attach --model model --method lora --targets lin0 --rank 2 --as ok_name"));
        Assert.Single(k.Value<PeftSharp.Adapters.PeftModel>("ok_name").Layers);
    }

    [Fact]
    public async Task Spectrum_of_non_finite_weights_names_the_layer_instead_of_a_native_trace()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(Setup);
        await k.Ok("using (torch.no_grad()) model.named_parameters().Single(p => p.name == \"lin1.weight\").parameter[0, 0] = float.NaN;");
        var weight = await k.Fails("#!peft spectrum --model model --layer lin1");
        Assert.Contains("weight at 'lin1' holds 1 NaN value(s) out of 1,024", weight);
        Assert.DoesNotContain("   at ", weight);
        await k.Ok("#!peft attach --model other --targets lin0 --rank 2 --init false --as otherPeft");
        await k.Ok("using (torch.no_grad()) foreach (var (n, p) in other.named_parameters().Where(p => p.name.Contains(\"lora_B\"))) p.fill_(float.PositiveInfinity);");
        var delta = await k.Fails("#!peft spectrum --model otherPeft --layer lin0");
        Assert.Contains("ΔW of adapter 'default' at 'lin0'", delta);
        Assert.Contains("lower the learning rate", delta);
        Assert.Contains("W at lin0", await k.Ok("#!peft spectrum --model otherPeft --layer lin0 --of weight"));   // still works
    }

    [Fact]
    public async Task Hundreds_of_malformed_commands_each_fail_with_a_message_and_the_kernel_stays_alive()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok(Setup);
        await k.Ok("#!peft attach --model other --targets lin0 --rank 2 --as otherPeft");
        var commands = MalformedCommands(new Random(20260612), 300).ToList();
        var clock = Stopwatch.StartNew();
        var problems = new List<string>();
        foreach (var command in commands)
        {
            var sent = k.Root.SendAsync(new SubmitCode(command));
            var finished = await Task.WhenAny(sent, Task.Delay(TimeSpan.FromSeconds(30)));
            Assert.True(finished == sent, $"'{command}' did not finish within 30 s.");
            var failed = (await sent).Events.OfType<CommandFailed>().FirstOrDefault();
            if (failed is null) problems.Add($"'{command}' was malformed but did not fail.");
            else if (string.IsNullOrWhiteSpace(failed.Message)) problems.Add($"'{command}' failed without a message.");
            else if (failed.Message.Contains("   at ", StringComparison.Ordinal)) problems.Add($"'{command}' showed a stack trace:\n{failed.Message}");
            var alive = await k.Submit("1 + 1");
            Assert.True(alive.OfType<ReturnValueProduced>().SingleOrDefault()?.Value is 2, $"the kernel stopped answering after '{command}'.");
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems.Distinct()));
        output.WriteLine($"{commands.Count} malformed commands in {clock.Elapsed.TotalSeconds:0.0} s");
        // Nothing was changed along the way.
        Assert.Contains("no adapters yet", await k.Fails("#!peft summary --model model"));
        Assert.Equal(["default"], k.Value<PeftSharp.Adapters.PeftModel>("otherPeft").AdapterNames);
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(3), $"{commands.Count} commands took {clock.Elapsed.TotalSeconds:0} s.");
    }

    /// <summary>Commands that are each wrong in at least one way (never a valid one by chance), built from a seed.</summary>
    static IEnumerable<string> MalformedCommands(Random random, int count)
    {
        string Pick(params string[] options) => options[random.Next(options.Length)];
        const string letters = "abcdefghijklmnopqrstuvwxyzé模λ-_.0123456789";
        string Word() => new(Enumerable.Range(0, random.Next(1, 9)).Select(_ => letters[random.Next(letters.Length)]).ToArray());
        string GoodTail() => Pick("", " --targets lin0", " --targets lin0,lin1 --rank 2");
        var makers = new Func<string>[]
        {
            () => $"#!peft {Pick("atach", "ATTACH", "attach2", "αttach", "merge-all", "help", "--help", "lora")}{GoodTail()}",       // unknown subcommand
            () => $"#!peft {Word()}z {Word()}",
            () => $"#!peft attach --model model --targets lin0 --{Pick("rnk", "alpah", "taget", "as2", "модель", "")}{Word()} 4",    // unknown parameter
            () => $"#!peft summary --model otherPeft --{Word()}x",
            () => $"#!peft attach --model model --targets lin0 --rank",                                                              // missing values
            () => $"#!peft attach --model{Pick("", " ")}",
            () => $"#!peft save --model otherPeft --path{Pick("", " ")}",
            () => $"#!peft load --model model --path",
            () => $"#!peft attach --model model --targets lin0 --rank {Pick("four", "-3", "0", "2.5", "1e999", "99999999999999999999", "0x10", "NaN", "--alpha")}",   // bad numbers
            () => $"#!peft attach --model model --targets lin0 --rank 2 --alpha {Pick("abc", "1,5", "∞", "1e99999")}",
            () => $"#!peft attach --model model --targets lin0 --rank {random.NextInt64(1L << 20, long.MaxValue)}",                 // huge
            () => $"#!peft attach --model model --targets \"lin0{Pick("", " ", "\\\"")}",                                            // quotes
            () => $"#!peft attach --model \"{Pick("mod\"el", "", " ", "model\" --rank \"")}\" --targets lin0",
            () => $"#!peft targets --model model --targets \"re:{Pick("(", "[a-", "*lin", "lin0)")}\"",
            () => $"#!peft attach --model {Pick("mödel", "模型", "model\u200b", "MODEL", "modèle")} --targets lin0",                  // unicode
            () => $"#!peft targets --model model --targets {Pick("линия0", "lin٠", "ｌｉｎ0", "lin0\u0301")}",
            () => $"#!peft {Pick("summary", "merge", "unmerge", "ranks", "routing", "spectrum --layer lin0", "save --path /tmp/x")} --model {Pick("text", "number", "x", "routing")}",   // wrong variable types
            () => $"#!peft attach --model {Pick("text", "number", "x", "routing")} --targets lin0",
            () => $"#!peft routing --weights {Pick("model", "text", "x", "nothing")}",
            () => $"#!peft attach --model model --targets lin0 --rank 2 --as {Pick("1abc", "class", "a.b", "x y", "\"a b\"", "for", "await", "名 字", "peft!")}",   // bad --as
            () => $"#!peft merge --model otherPeft --adapters {Pick("nope", "default,nope", ",", "\"\"")}",
            () => $"#!peft spectrum --model otherPeft --of {Pick("gradient", "DELTA2", "", "--layer")}",
            () => $"#!peft spectrum --model otherPeft --layer {Pick("lin7", "lin0.weight", "", "\"\"", "*")}",
            () => $"#!peft methods --method {Pick("nope", "LORA2", "lo ra", "ⅼora")}",
            () => $"#!peft attach --model model --method {Pick("lroa", "", "\"\"", "lora;", "bitfit lora")} --targets lin0",
            () => $"#!peft load --model model --path {Pick("/nonexistent", ".", "\"\"", "/dev/null", "/proc/self")} --name {Word()}x",
            () => $"#!peft attach --model model --targets lin0 --rank 2 --rank 3 --rank",
        };
        for (int i = 0; i < count; i++) yield return makers[random.Next(makers.Length)]();
    }
}

public sealed class MistakeTests
{
    [Fact]
    public async Task Mistake_Show_displays_the_exact_failure_message_and_the_cell_succeeds()
    {
        using var k = await TestKernel.StartAsync();
        await k.Ok("var model = new Mlp(16, 32, 8);");
        var direct = await k.Fails("#!peft attach --model modle --targets lin0");
        var events = await k.Submit("await Mistake.Show(\"#!peft attach --model modle --targets lin0\");");
        var root = events.OfType<CommandFailed>().Where(f => f.Command is SubmitCode s && s.Code.StartsWith("await", StringComparison.Ordinal)).ToList();
        Assert.True(root.Count == 0, string.Join("\n", events.Select(e => $"{e.GetType().Name} {e.Command.GetType().Name} {(e.Command as SubmitCode)?.Code} {e.Command.Parent?.GetType().Name}")));
        Assert.Contains(events, e => e is CommandSucceeded s && s.Command is SubmitCode c && c.Code.StartsWith("await", StringComparison.Ordinal));
        var html = TestKernel.Html(events);
        Assert.Contains("this fails, on purpose", html);
        Assert.Contains(direct, html);
        // Code that works is not a mistake: the cell says so and fails.
        Assert.Contains("ran without an error", await k.Fails("await Mistake.Show(\"#!peft methods\");"));
    }
}

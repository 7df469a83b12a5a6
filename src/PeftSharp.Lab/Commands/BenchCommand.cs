namespace PeftSharp.Lab.Commands;

/// <summary><c>bench lora</c> (see BenchLora) and <c>bench bert</c> (see BenchBert).</summary>
static class BenchCommand
{
    public static Task<int> RunAsync(Arguments arguments) =>
        Task.FromResult(arguments.Next("bench") == "bert" ? BenchBert.Run(arguments) : BenchLora.Run(arguments));
}

namespace PeftSharp.Lab.Commands;

/// <summary><c>bench lora</c>: see BenchLora.</summary>
static class BenchCommand
{
    public static Task<int> RunAsync(Arguments arguments) => Task.FromResult(BenchLora.Run(arguments));
}

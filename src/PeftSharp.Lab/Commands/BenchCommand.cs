namespace PeftSharp.Lab.Commands;

/// <summary><c>bench lora</c> (see BenchLora), <c>bench bert</c> (see BenchBert) and <c>bench adapters</c> (see BenchAdapters).</summary>
static class BenchCommand
{
    public static Task<int> RunAsync(Arguments arguments) =>
        Task.FromResult(arguments.Next("bench") switch
        {
            "bert" => BenchBert.Run(arguments),
            "adapters" => BenchAdapters.Run(arguments),
            _ => BenchLora.Run(arguments),
        });
}

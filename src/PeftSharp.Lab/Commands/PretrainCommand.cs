namespace PeftSharp.Lab.Commands;

/// <summary><c>pretrain gpt</c> and <c>pretrain vit</c>: reproduce the checkpoints in <c>data/models/</c>.</summary>
static class PretrainCommand
{
    public static int Run(Arguments arguments) => arguments.Next("pretrain") switch
    {
        "gpt" => PretrainGpt.Run(arguments),
        "vit" => PretrainVit.Run(arguments),
        var other => throw new ArgumentException($"Unknown model '{other}'; use `pretrain gpt` (Brown corpus) or `pretrain vit` (MNIST).", nameof(arguments)),
    };
}

using PeftSharp.Data;
using static TorchSharp.torch;

namespace PeftSharp.Models.Gpt;

/// <summary>
/// How <see cref="GptGeneration"/> picks tokens. <see cref="Temperature"/> 0 is greedy (always the most
/// likely token, deterministic); above 0 it samples from the softmax of logits / temperature, restricted to the
/// <see cref="TopK"/> most likely tokens when set, with a <see cref="SeededRandom"/> seeded by <see cref="Seed"/>, so
/// the same seed gives the same text on every platform.
/// </summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 40;

    /// <summary>0: greedy; e.g. 0.8: sample, sharper than the model's distribution; 1: the model's distribution.</summary>
    public double Temperature { get; init; }

    /// <summary>Sample only among the k most likely tokens (null: all).</summary>
    public int? TopK { get; init; }

    public ulong Seed { get; init; }

    /// <summary>Stop when the model emits <see cref="GptTokenizer.EndOfTextId"/>.</summary>
    public bool StopAtEndOfText { get; init; } = true;

    /// <summary>Never emit <see cref="GptTokenizer.UnknownId"/>.</summary>
    public bool SuppressUnknown { get; init; } = true;

    public static GenerationOptions Greedy(int maxNewTokens = 40) => new() { MaxNewTokens = maxNewTokens };

    public static GenerationOptions Sampled(double temperature = 0.8, int? topK = 40, ulong seed = 0, int maxNewTokens = 40) =>
        new() { MaxNewTokens = maxNewTokens, Temperature = temperature, TopK = topK, Seed = seed };

    public void Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "MaxNewTokens must be 0 or more.");
        if (!(Temperature >= 0)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be 0 (greedy) or more.");
        if (TopK is < 1) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be at least 1 (or null for no limit).");
    }
}

/// <summary>Text generation with a <see cref="GptForCausalLM"/>: one token at a time, the whole (cropped) context
/// re-run each step (the models here are small; no key/value cache).</summary>
public static class GptGeneration
{
    /// <summary>The ids that follow <paramref name="prompt"/> (at most <see cref="GenerationOptions.MaxNewTokens"/>;
    /// the end-of-text id is not included). An empty prompt starts from <see cref="GptTokenizer.EndOfTextId"/>.</summary>
    public static IReadOnlyList<int> Generate(GptForCausalLM model, IReadOnlyList<int> prompt, GenerationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= GenerationOptions.Greedy();
        options.Validate();
        int vocabulary = model.Config.VocabSize;
        foreach (int id in prompt)
            if (id < 0 || id >= vocabulary)
                throw new ArgumentOutOfRangeException(nameof(prompt), id, $"Prompt id {id} is outside the model's vocabulary 0..{vocabulary - 1}; encode the prompt with the model's own tokenizer.");

        var context = prompt.Count == 0 ? new List<int> { GptTokenizer.EndOfTextId } : prompt.ToList();
        var generated = new List<int>();
        var random = new SeededRandom(options.Seed);
        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            var device = model.parameters().First().device;
            for (int step = 0; step < options.MaxNewTokens; step++)
            {
                float[] logits;
                using (var scope = NewDisposeScope())
                {
                    int room = model.Config.MaxPositions - model.VirtualPositions;              // a prompt or prefix takes positions too
                    var window = context.Skip(Math.Max(0, context.Count - room)).Select(i => (long)i).ToArray();
                    var ids = tensor(window, [1, window.Length], ScalarType.Int64, device);
                    logits = model.call(ids)[0, -1].to(ScalarType.Float32).cpu().data<float>().ToArray();    // (V)
                }
                if (options.SuppressUnknown && vocabulary > GptTokenizer.UnknownId) logits[GptTokenizer.UnknownId] = float.NegativeInfinity;
                int next = options.Temperature == 0 ? ArgMax(logits) : Sample(logits, options, random);
                if (next == GptTokenizer.EndOfTextId && options.StopAtEndOfText) break;
                generated.Add(next);
                context.Add(next);
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return generated;
    }

    /// <summary>The text that follows <paramref name="prompt"/> (the continuation only).</summary>
    public static string Complete(GptForCausalLM model, GptTokenizer tokenizer, string prompt, GenerationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return tokenizer.Decode(Generate(model, tokenizer.Encode(prompt), options));
    }

    static int ArgMax(float[] values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    static int Sample(float[] logits, GenerationOptions options, SeededRandom random)
    {
        // Candidates: the top k by logit (ties broken by id, so the order is the same everywhere).
        var order = Enumerable.Range(0, logits.Length).Where(i => !float.IsNegativeInfinity(logits[i]))
                              .OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        if (options.TopK is int k && k < order.Length) order = order[..k];
        double max = logits[order[0]];
        var weights = order.Select(i => Math.Exp((logits[i] - max) / options.Temperature)).ToArray();
        double u = random.NextDouble() * weights.Sum();
        for (int i = 0; i < order.Length; i++)
        {
            u -= weights[i];
            if (u < 0) return order[i];
        }
        return order[^1];
    }
}

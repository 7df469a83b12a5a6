using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// Evaluation metrics as plain numbers: accuracy, macro-averaged F1 and perplexity, from predicted and true class ids
/// or (<c>...FromLogits</c>) from logits (..., classes) and labels (...); positions labelled
/// <see cref="Losses.IgnoreIndex"/> are skipped.
/// </summary>
public static class Metrics
{
    /// <summary>The share of <paramref name="predictions"/> equal to <paramref name="labels"/> (0 for no rows).</summary>
    public static double Accuracy(IReadOnlyList<long> predictions, IReadOnlyList<long> labels)
    {
        var (p, l) = Kept(predictions, labels);
        return p.Count == 0 ? 0 : (double)p.Where((x, i) => x == l[i]).Count() / p.Count;
    }

    /// <summary>Accuracy of the arg-max of <paramref name="logits"/> (..., classes) against <paramref name="labels"/> (...).</summary>
    public static double AccuracyFromLogits(Tensor logits, Tensor labels)
    {
        var (p, l) = Flatten(logits, labels);
        return Accuracy(p, l);
    }

    /// <summary>
    /// Macro F1: the F1 score (2·precision·recall / (precision + recall)) of each class, averaged with equal weight. A
    /// class's F1 is 0 when it has no true positives. With <paramref name="classes"/> every class 0 .. classes - 1
    /// counts (so a class never predicted nor present scores 0, as scikit-learn's <c>labels=range(classes)</c>);
    /// without it, the classes that occur in the labels or the predictions (scikit-learn's default).
    /// </summary>
    public static double MacroF1(IReadOnlyList<long> predictions, IReadOnlyList<long> labels, int? classes = null)
    {
        var (p, l) = Kept(predictions, labels);
        var classList = classes is int c
            ? Enumerable.Range(0, c).Select(i => (long)i).ToList()
            : p.Concat(l).Distinct().Order().ToList();
        if (classList.Count == 0) return 0;
        double sum = 0;
        foreach (long k in classList)
        {
            int tp = 0, fp = 0, fn = 0;
            for (int i = 0; i < p.Count; i++)
            {
                if (p[i] == k && l[i] == k) tp++;
                else if (p[i] == k) fp++;
                else if (l[i] == k) fn++;
            }
            sum += tp == 0 ? 0 : 2.0 * tp / (2.0 * tp + fp + fn);
        }
        return sum / classList.Count;
    }

    /// <summary>Macro F1 of the arg-max of <paramref name="logits"/> (..., classes).</summary>
    public static double MacroF1FromLogits(Tensor logits, Tensor labels, int? classes = null)
    {
        var (p, l) = Flatten(logits, labels);
        return MacroF1(p, l, classes ?? (int)logits.shape[^1]);
    }

    /// <summary>Perplexity, exp of a mean cross-entropy in nats per token.</summary>
    public static double Perplexity(double meanCrossEntropy)
    {
        if (double.IsNaN(meanCrossEntropy) || meanCrossEntropy < 0)
            throw new ArgumentOutOfRangeException(nameof(meanCrossEntropy), meanCrossEntropy, "A mean cross-entropy is a number of nats, 0 or more.");
        return Math.Exp(meanCrossEntropy);
    }

    static (List<long> Predictions, List<long> Labels) Kept(IReadOnlyList<long> predictions, IReadOnlyList<long> labels)
    {
        ArgumentNullException.ThrowIfNull(predictions);
        ArgumentNullException.ThrowIfNull(labels);
        if (predictions.Count != labels.Count)
            throw new ArgumentException($"{predictions.Count} predictions but {labels.Count} labels; give one prediction per label.", nameof(labels));
        var p = new List<long>(predictions.Count);
        var l = new List<long>(labels.Count);
        for (int i = 0; i < labels.Count; i++)
            if (labels[i] != Losses.IgnoreIndex) { p.Add(predictions[i]); l.Add(labels[i]); }
        return (p, l);
    }

    static (long[] Predictions, long[] Labels) Flatten(Tensor logits, Tensor labels)
    {
        if (logits.dim() != labels.dim() + 1 || !logits.shape[..^1].SequenceEqual(labels.shape))
            throw new ArgumentException($"Logits of shape [{string.Join(", ", logits.shape)}] need labels of shape [{string.Join(", ", logits.shape[..^1])}], not [{string.Join(", ", labels.shape)}].", nameof(labels));
        using var scope = NewDisposeScope();
        return (logits.detach().argmax(-1).reshape(-1).cpu().data<long>().ToArray(), labels.reshape(-1).cpu().to(ScalarType.Int64).data<long>().ToArray());
    }
}

/// <summary>The losses of the common tasks, with PyTorch's ignore index.</summary>
public static class Losses
{
    /// <summary>Labels equal to this take no loss (PyTorch's default <c>ignore_index</c>; the batchers use it).</summary>
    public const long IgnoreIndex = Data.TokenClassificationSet.IgnoreIndex;

    /// <summary>Mean cross-entropy of <paramref name="logits"/> (B, classes) against <paramref name="labels"/> (B).</summary>
    public static Tensor Classification(Tensor logits, Tensor labels) =>
        nn.functional.cross_entropy(logits, labels, ignore_index: IgnoreIndex);

    /// <summary>
    /// Causal language-modelling loss: the mean cross-entropy over every position whose label is not
    /// <see cref="IgnoreIndex"/>. <paramref name="logits"/> (B, T, V) and <paramref name="labels"/> (B, T) are aligned
    /// (label t is the token that follows input t, as <see cref="Data.LanguageModelSet"/> makes them); with
    /// <paramref name="shift"/> the labels are the inputs themselves and are shifted here, as Hugging Face's
    /// <c>*ForCausalLM</c> does.
    /// </summary>
    public static Tensor CausalLanguageModel(Tensor logits, Tensor labels, bool shift = false)
    {
        using var scope = NewDisposeScope();
        var (l, y) = Aligned(logits, labels, shift);
        return nn.functional.cross_entropy(l, y, ignore_index: IgnoreIndex).MoveToOuterDisposeScope();
    }

    /// <summary>The summed cross-entropy and the number of positions that count, for a token-weighted mean over
    /// many batches (<c>Σ sums / Σ counts</c>; <see cref="Metrics.Perplexity"/> of that is the perplexity).</summary>
    public static (double Sum, long Count) CausalLanguageModelSum(Tensor logits, Tensor labels, bool shift = false)
    {
        using var scope = NewDisposeScope();
        var (l, y) = Aligned(logits, labels, shift);
        double sum = nn.functional.cross_entropy(l.to(ScalarType.Float32), y, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum).item<float>();
        long count = y.ne(IgnoreIndex).sum().item<long>();
        return (sum, count);
    }

    static (Tensor Logits, Tensor Labels) Aligned(Tensor logits, Tensor labels, bool shift)
    {
        if (logits.dim() != 3 || labels.dim() != 2 || logits.shape[0] != labels.shape[0] || logits.shape[1] != labels.shape[1])
            throw new ArgumentException($"Expected logits (B, T, V) and labels (B, T); got [{string.Join(", ", logits.shape)}] and [{string.Join(", ", labels.shape)}].", nameof(labels));
        if (shift)
        {
            logits = logits[.., ..^1];
            labels = labels[.., 1..];
        }
        return (logits.reshape(-1, logits.shape[^1]), labels.reshape(-1));
    }
}

/// <summary>Evaluation of a causal language model on a <see cref="Data.LanguageModelSet"/>.</summary>
public static class LanguageModelEvaluation
{
    /// <summary>
    /// The token-weighted mean cross-entropy (nats per token) of <paramref name="model"/> (ids (B, T) → logits (B, T, V))
    /// over the first <paramref name="maxRows"/> rows of <paramref name="set"/> (all when null), in order, in eval mode
    /// without gradients; and its perplexity and the number of tokens scored.
    /// </summary>
    public static (double MeanLoss, double Perplexity, long Tokens) Evaluate(nn.Module<Tensor, Tensor> model, Data.LanguageModelSet set, int batchSize = 16, int? maxRows = null, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(set);
        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            double sum = 0;
            long count = 0;
            int rows = Math.Min(set.Count, maxRows ?? set.Count);
            foreach (var batch in set.Batches(batchSize).TakeWhile(b => b.Rows[0] < rows))
            {
                using var scope = NewDisposeScope();
                var t = batch.ToTensors(device);
                int keep = Math.Min(batch.Size, rows - batch.Rows[0]);
                var (s, c) = Losses.CausalLanguageModelSum(model.call(t.InputIds[..keep]), t.Labels[..keep]);
                sum += s;
                count += c;
            }
            if (count == 0) throw new ArgumentException("No tokens to score: the set or maxRows is empty.", nameof(maxRows));
            double mean = sum / count;
            return (mean, Metrics.Perplexity(mean), count);
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }

    /// <summary>
    /// The mean cross-entropy (nats per token) of each row (block) of <paramref name="set"/>, in order: the per-example
    /// values a paired comparison of two models on the same blocks needs (<see cref="Analysis.Claim.CheckOnExamples(string, IReadOnlyList{double}, string, IReadOnlyList{double}, string, bool, double)"/>).
    /// A row with no scored token gets NaN, so a caller notices.
    /// </summary>
    public static IReadOnlyList<double> BlockLosses(nn.Module<Tensor, Tensor> model, Data.LanguageModelSet set, int batchSize = 16, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(set);
        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            var losses = new List<double>(set.Count);
            foreach (var batch in set.Batches(batchSize))
            {
                using var scope = NewDisposeScope();
                var t = batch.ToTensors(device);
                var logits = model.call(t.InputIds);                                                     // (B, T, V)
                var perToken = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]).to(ScalarType.Float32), t.Labels.reshape(-1),
                    ignore_index: Losses.IgnoreIndex, reduction: nn.Reduction.None).reshape(t.Labels.shape);   // (B, T), 0 where ignored
                var counted = t.Labels.ne(Losses.IgnoreIndex).sum(1).to(ScalarType.Float32);           // (B)
                losses.AddRange(perToken.sum(1).div(counted).data<float>().Select(v => (double)v));
            }
            return losses;
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }
}

/// <summary>Evaluation of an image classifier on an <see cref="Data.ImageSet"/>.</summary>
public static class ImageClassificationEvaluation
{
    /// <summary>Accuracy, macro F1 and mean cross-entropy of <paramref name="model"/> (images (B, 1, 28, 28) → logits
    /// (B, classes)) over all of <paramref name="set"/>, in eval mode without gradients.</summary>
    public static (double Accuracy, double MacroF1, double MeanLoss) Evaluate(nn.Module<Tensor, Tensor> model, Data.ImageSet set, int batchSize = 250, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(set);
        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            var predictions = new List<long>();
            var labels = new List<long>();
            double lossSum = 0;
            int classes = 0;
            foreach (var batch in set.Batches(batchSize))
            {
                using var scope = NewDisposeScope();
                var t = batch.ToTensors(device);
                var logits = model.call(t.Images);
                classes = (int)logits.shape[1];
                lossSum += nn.functional.cross_entropy(logits, t.Labels, reduction: nn.Reduction.Sum).item<float>();
                predictions.AddRange(logits.argmax(1).cpu().data<long>().ToArray());
                labels.AddRange(t.Labels.cpu().data<long>().ToArray());
            }
            if (labels.Count == 0) throw new ArgumentException("The image set is empty.", nameof(set));
            return (Metrics.Accuracy(predictions, labels), Metrics.MacroF1(predictions, labels, classes), lossSum / labels.Count);
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }
}

/// <summary>Evaluation of a sequence classifier (input ids (B, T), attention mask (B, T), token types → logits
/// (B, classes), as <see cref="Models.Bert.BertForSequenceClassification"/>) on a <see cref="Data.TextClassificationSet"/>.</summary>
public static class TextClassificationEvaluation
{
    /// <summary>Whether <paramref name="model"/>'s top class is each row's label, in the set's order: what a paired
    /// verdict over the same rows needs (<c>Claim.CheckOnExamples</c>). Eval mode without gradients; the model's
    /// mode is restored.</summary>
    public static bool[] Correct(nn.Module<Tensor, Tensor?, Tensor?, Tensor> model, Data.TextClassificationSet set, int batchSize = 64, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(set);
        if (set.Count == 0) throw new ArgumentException("The text set is empty.", nameof(set));
        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            var right = new List<bool>(set.Count);
            foreach (var batch in set.Batches(batchSize))
            {
                using var scope = NewDisposeScope();
                var t = batch.ToTensors(device);
                right.AddRange(model.call(t.InputIds, t.AttentionMask, null).argmax(1).eq(t.Labels).cpu().data<bool>().ToArray());
            }
            return right.ToArray();
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }

    /// <summary>The share of rows of <paramref name="set"/> that <paramref name="model"/> gets right (see <see cref="Correct"/>).</summary>
    public static double Accuracy(nn.Module<Tensor, Tensor?, Tensor?, Tensor> model, Data.TextClassificationSet set, int batchSize = 64, Device? device = null) =>
        Correct(model, set, batchSize, device).Average(c => c ? 1.0 : 0.0);
}

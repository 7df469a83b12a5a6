using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

public sealed class MetricsTests
{
    // Predictions and labels of the hand-computed example:
    // class 0: TP 1, FP 1, FN 1 -> F1 2/4 = 0.5; class 1: TP 2, FP 0, FN 1 -> F1 4/5 = 0.8; class 2: TP 1, FP 1, FN 0 -> F1 2/3.
    static readonly long[] Predicted = [0, 0, 1, 1, 2, 2];
    static readonly long[] Actual = [0, 1, 1, 1, 2, 0];

    [Fact]
    public void Accuracy_is_the_share_of_predictions_that_match_their_labels()
    {
        Assert.Equal(4.0 / 6, Metrics.Accuracy(Predicted, Actual), 12);
    }

    [Fact]
    public void Accuracy_and_F1_skip_positions_labelled_with_the_ignore_index()
    {
        long[] predicted = [.. Predicted, 1, 2];
        long[] actual = [.. Actual, -100, -100];
        Assert.Equal(4.0 / 6, Metrics.Accuracy(predicted, actual), 12);
        Assert.Equal(Metrics.MacroF1(Predicted, Actual), Metrics.MacroF1(predicted, actual), 12);
    }

    [Fact]
    public void Macro_F1_averages_the_F1_of_each_class_with_equal_weight()
    {
        Assert.Equal((0.5 + 0.8 + 2.0 / 3) / 3, Metrics.MacroF1(Predicted, Actual), 12);
    }

    [Fact]
    public void Macro_F1_with_a_class_count_scores_classes_that_never_occur_as_zero()
    {
        Assert.Equal((0.5 + 0.8 + 2.0 / 3 + 0) / 4, Metrics.MacroF1(Predicted, Actual, classes: 4), 12);
    }

    [Fact]
    public void Perfect_predictions_have_accuracy_and_macro_F1_of_one()
    {
        Assert.Equal(1.0, Metrics.Accuracy(Actual, Actual));
        Assert.Equal(1.0, Metrics.MacroF1(Actual, Actual));
    }

    [Fact]
    public void The_tensor_overloads_take_the_arg_max_of_the_logits()
    {
        using var scope = NewDisposeScope();
        var logits = nn.functional.one_hot(tensor(Predicted), 3).to(ScalarType.Float32) * 5 + 0.1f;   // (6, 3), arg-max = Predicted
        Assert.Equal(4.0 / 6, Metrics.AccuracyFromLogits(logits, tensor(Actual)), 6);
        Assert.Equal((0.5 + 0.8 + 2.0 / 3) / 3, Metrics.MacroF1FromLogits(logits, tensor(Actual)), 6);
    }

    [Fact]
    public void Mismatched_counts_are_refused_with_both_numbers()
    {
        var e = Assert.Throws<ArgumentException>(() => Metrics.Accuracy([1, 2], [1]));
        Assert.Contains("2 predictions but 1 labels", e.Message);
    }

    [Fact]
    public void Perplexity_is_e_to_the_mean_cross_entropy()
    {
        Assert.Equal(1.0, Metrics.Perplexity(0));
        Assert.Equal(Math.E * Math.E, Metrics.Perplexity(2), 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => Metrics.Perplexity(-1));
    }

    [Fact]
    public void A_uniform_language_model_has_a_perplexity_equal_to_its_vocabulary_size()
    {
        using var scope = NewDisposeScope();
        var logits = zeros(2, 5, 50);                                   // uniform over 50 tokens
        var labels = randint(0, 50, [2, 5]);
        var loss = Losses.CausalLanguageModel(logits, labels).item<float>();
        Assert.Equal(50, Metrics.Perplexity(loss), 3);
    }

    [Fact]
    public void The_causal_language_model_loss_skips_ignored_labels()
    {
        using var scope = NewDisposeScope();
        // Two positions over a vocabulary of 2: logits (0, ln 3) -> p(1) = 3/4; the second position is ignored.
        var logits = tensor(new float[] { 0, (float)Math.Log(3), 7, -7 }, [1, 2, 2]);
        var labels = tensor(new long[] { 1, -100 }, [1, 2]);
        Assert.Equal(-Math.Log(0.75), Losses.CausalLanguageModel(logits, labels).item<float>(), 5);
        var (sum, count) = Losses.CausalLanguageModelSum(logits, labels);
        Assert.Equal(1, count);
        Assert.Equal(-Math.Log(0.75), sum, 5);
    }

    [Fact]
    public void Shifting_inside_the_loss_equals_labels_shifted_beforehand()
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        var logits = randn(2, 6, 11);
        var ids = randint(0, 11, [2, 6]);
        var shifted = Losses.CausalLanguageModel(logits, ids, shift: true).item<float>();
        var aligned = Losses.CausalLanguageModel(logits[.., ..^1], ids[.., 1..]).item<float>();
        Assert.Equal(aligned, shifted, 6);
    }

    [Fact]
    public void The_classification_loss_is_the_mean_cross_entropy()
    {
        using var scope = NewDisposeScope();
        var logits = tensor(new float[] { 0, (float)Math.Log(3) }, [1, 2]);
        Assert.Equal(-Math.Log(0.25), Losses.Classification(logits, tensor(new long[] { 0 })).item<float>(), 5);
    }
}

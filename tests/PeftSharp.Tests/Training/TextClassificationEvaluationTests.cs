using Microsoft.Data.Analysis;
using PeftSharp.Data;
using PeftSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

/// <summary>What <see cref="TextClassificationEvaluation"/> reports: one verdict per row in the set's order, the accuracy
/// as their mean, the model's mode as it was, and no tensor left behind.</summary>
public sealed class TextClassificationEvaluationTests
{
    // One id per letter, past the special ids 0 (pad), 1 (prefix) and 2 (suffix).
    static readonly ITokenEncoder Letters = TokenEncoder.Create(t => t.Where(char.IsLetter).Select(c => 10 + char.ToLowerInvariant(c) - 'a').ToList(),
                                                                padId: 0, prefix: [1], suffix: [2]);

    /// <summary>A classifier whose answer is known per row: class 1 when the first token after the prefix is even.</summary>
    sealed class FirstTokenParity() : nn.Module<Tensor, Tensor?, Tensor?, Tensor>(nameof(FirstTokenParity))
    {
        public override Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
        {
            var even = inputIds[.., 1].remainder(2).eq(0).to(ScalarType.Float32);   // (B)
            return stack([1 - even, even], 1);                                        // (B, 2) logits
        }
    }

    [Fact]
    public void Each_row_gets_its_own_verdict_in_the_sets_order_and_the_accuracy_is_their_mean()
    {
        var set = TextClassificationSet.Create(Datasets.Sentiment(Split.Validation), Letters, maxLength: 24, classes: 2);
        var model = new FirstTokenParity();
        model.train();
        var expected = Enumerable.Range(0, set.Count).Select(row => (set.Ids(row)[1] % 2 == 0 ? 1 : 0) == set.Label(row)).ToArray();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;

        var correct = TextClassificationEvaluation.Correct(model, set, batchSize: 64);
        double accuracy = TextClassificationEvaluation.Accuracy(model, set, batchSize: 50);

        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.Equal(expected, correct);
        Assert.Contains(true, correct);
        Assert.Contains(false, correct);   // the parity rule is right on some rows and wrong on others: the order matters
        Assert.Equal(expected.Count(c => c) / (double)set.Count, accuracy, 12);
        Assert.True(model.training, "the model's training mode was not restored");
    }

    [Fact]
    public void An_empty_set_is_refused_by_name()
    {
        var empty = TextClassificationSet.Create(new DataFrame(new StringDataFrameColumn("Text", Array.Empty<string>()), new Int32DataFrameColumn("Label", Array.Empty<int>())), Letters);
        var error = Assert.Throws<ArgumentException>(() => TextClassificationEvaluation.Correct(new FirstTokenParity(), empty));
        Assert.Contains("empty", error.Message);
    }
}

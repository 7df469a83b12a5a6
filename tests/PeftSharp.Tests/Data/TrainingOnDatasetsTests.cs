using PeftSharp.Data;
using PeftSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests.Data;

/// <summary>The batches feed the project's <see cref="Trainer"/> as they are: tensors are made inside each step's scope
/// and freed with it.</summary>
public sealed class TrainingOnDatasetsTests
{
    // Mean of the word embeddings over the attention mask, then a linear head: (B, T) -> (B, classes).
    sealed class BagOfWords : Module<Tensor, Tensor, Tensor>
    {
        readonly Embedding embedding;
        readonly Linear head;

        public BagOfWords(int vocabulary, int classes) : base(nameof(BagOfWords))
        {
            embedding = Embedding(vocabulary, 16);
            head = Linear(16, classes);
            RegisterComponents();
        }

        public override Tensor forward(Tensor ids, Tensor mask)
        {
            using var scope = NewDisposeScope();
            var m = mask.unsqueeze(-1).to(ScalarType.Float32);                     // (B, T, 1)
            var mean = (embedding.call(ids) * m).sum(1) / m.sum(1).clamp_min(1);   // (B, 16)
            return head.call(mean).MoveToOuterDisposeScope();
        }
    }

    [Fact]
    public void A_bag_of_words_model_learns_sentiment_from_seeded_batches_without_leaking_tensors()
    {
        manual_seed(0);
        var trainFrame = Datasets.Sentiment(Split.Train);
        var vocabulary = WordVocabulary.Build(trainFrame.Columns["Text"].Cast<string>(), minCount: 2);
        var train = TextClassificationSet.Create(trainFrame, vocabulary, maxLength: 48, classes: 2);
        var validation = TextClassificationSet.Create(Datasets.Sentiment(Split.Validation), vocabulary, maxLength: 48, classes: 2);
        var model = new BagOfWords(vocabulary.Count, 2);

        double Accuracy()
        {
            var t = validation.All().ToTensors();
            return model.call(t.InputIds, t.AttentionMask).argmax(1).eq(t.Labels).to(ScalarType.Float32).mean().item<float>();
        }

        // Live tensors after the second step (optimizer state exists by then) and after the last: equal if no step leaks.
        var live = new Dictionary<int, long>();
        var trainer = new Trainer();
        trainer.Progress += p => { if (p.Step == 2 || p.Step == p.TotalSteps - 1) live[p.Step] = DisposeScopeManager.Statistics.ThreadTotalLiveCount; };
        var log = trainer.Fit(model, epoch => train.Batches(64, seed: 42 + (ulong)epoch),
            batch =>
            {
                var t = batch.ToTensors();
                return functional.cross_entropy(model.call(t.InputIds, t.AttentionMask), t.Labels);
            },
            new TrainerOptions { Epochs = 3, LearningRate = 3e-2 },
            evaluate: () => new Dictionary<string, double> { ["accuracy"] = Accuracy() });

        Assert.Equal(3 * 33, log.Steps.Count);
        Assert.Equal(live[2], live[log.Steps.Count - 1]);
        double accuracy = log.LastEvaluation!.Metrics["accuracy"];
        Assert.True(accuracy > 0.70, $"validation accuracy {accuracy:P1} after {log.Steps.Count} steps; a bag of words reaches > 70%.");
    }
}

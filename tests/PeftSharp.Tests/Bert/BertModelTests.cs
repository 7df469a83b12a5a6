using PeftSharp.Adapters;
using PeftSharp.IO;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Models.Bert;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tests.Bert;

/// <summary>The TorchSharp BERT's structure (Hugging Face names), its use with adapters, and its attention-prefix hook.</summary>
[Collection(MiniLmCollection.Name)]
public sealed class BertModelTests(MiniLmFixture minilm)
{
    static readonly BertConfig Small = new() { VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 32, MaxPositionEmbeddings = 24 };

    [Fact]
    public void State_dict_keys_are_Hugging_Face_BertModel_keys()
    {
        using var model = new BertModel(Small);
        var expected = new List<string>
        {
            "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
            "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias",
        };
        for (int i = 0; i < Small.NumHiddenLayers; i++)
            foreach (var module in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                                           "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm" })
            {
                expected.Add($"encoder.layer.{i}.{module}.weight");
                expected.Add($"encoder.layer.{i}.{module}.bias");
            }
        expected.AddRange(["pooler.dense.weight", "pooler.dense.bias"]);
        Assert.Equal(expected, model.state_dict().Keys.ToList());
    }

    [Fact]
    public void A_classifier_has_Hugging_Face_BertForSequenceClassification_keys_and_pooling_needs_a_pooler()
    {
        using var model = new BertForSequenceClassification(new BertModel(Small), numLabels: 3);
        var keys = model.state_dict().Keys.ToList();
        Assert.Equal("bert.embeddings.word_embeddings.weight", keys[0]);
        Assert.Equal(["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"], keys[^4..]);
        using var logits = model.call(zeros(2, 5, dtype: ScalarType.Int64), null, null);
        Assert.Equal([2, 3], logits.shape);

        var error = Assert.Throws<ArgumentException>(() => new BertForSequenceClassification(new BertModel(Small with { AddPoolingLayer = false }), 2, BertPooling.Pooler));
        Assert.Contains("BertPooling.Cls or BertPooling.Mean", error.Message);
    }

    [Fact]
    public void The_ONNX_weights_take_PyTorch_names_and_layout_and_fill_every_parameter()
    {
        // Loading checks that keys and shapes are exactly the model's; here: the names and the (out, in) transposes.
        foreach (var pretrained in PretrainedBert.All)
        {
            var weights = OnnxBertWeights.StateDict(OnnxModel.Parse(pretrained.ReadOnnx()));
            try
            {
                Assert.Equal(pretrained == PretrainedBert.MiniLM ? 103 : 101, weights.Count);   // 16 per layer, 5 embedding, 2 pooler (MiniLM)
                Assert.Equal([384, 384], weights["encoder.layer.0.attention.self.query.weight"].shape);
                Assert.Equal([1536, 384], weights["encoder.layer.5.intermediate.dense.weight"].shape);   // (out, in); ONNX holds (in, out)
                Assert.Equal([384, 1536], weights["encoder.layer.5.output.dense.weight"].shape);
                if (pretrained == PretrainedBert.MiniLM)
                    foreach (var (key, value) in minilm.Model.state_dict())
                        Assert.True(Tensors.Same(weights[key], value), $"{key} differs from the ONNX initializer.");
            }
            finally
            {
                foreach (var t in weights.Values) t.Dispose();
            }
        }
    }

    [Fact]
    public void LoRA_on_query_and_value_attaches_to_exactly_the_12_attention_projections_of_MiniLM()
    {
        var model = minilm.Model;
        using var _ = no_grad();
        using var batch = minilm.Tokenizer.Encode(["Adapters on a frozen encoder.", "Hello"]);
        using var before = model.Forward(batch);

        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["query", "value"], R = 8, LoraAlpha = 16 });
        try
        {
            var expected = Enumerable.Range(0, 6).SelectMany(i => new[] { $"encoder.layer.{i}.attention.self.query", $"encoder.layer.{i}.attention.self.value" });
            Assert.Equal(expected, peft.Layers.Select(l => l.Path));
            Assert.Equal(12 * 8 * (384 + 384), peft.ParameterReport().TrainableParameters);
            using var after = model.Forward(batch);
            Tensors.AssertEqual(before, after, "output with a fresh LoRA (B = 0) vs the base model");
        }
        finally
        {
            peft.Unload();
        }
    }

    [Fact]
    public void A_classifier_with_LoRA_and_a_saved_head_trains_only_those_and_saves_Hugging_Face_keys()
    {
        manual_seed(3);
        var model = new BertForSequenceClassification(minilm.Model, numLabels: 2, BertPooling.Mean);   // not disposed: the BERT is shared
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["query", "value"], R = 4, LoraAlpha = 8, ModulesToSave = ["classifier"] });
        try
        {
            TrainAndSave(model, peft);
        }
        finally
        {
            peft.Unload();
            model.eval();
        }
    }

    void TrainAndSave(BertForSequenceClassification model, PeftModel peft)
    {
        Assert.Equal(12, peft.Layers.Count);
        Assert.All(peft.Layers, l => Assert.StartsWith("bert.encoder.layer.", l.Path));

        using var batch = minilm.Tokenizer.Encode(["great film, loved it", "dull and far too long", "a delight", "a waste of time"]);
        using var labels = tensor(new long[] { 1, 0, 1, 0 });
        var before = Tensors.Snapshot(model);
        var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        model.train();
        var losses = new List<float>();
        for (int step = 0; step < 3; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var loss = functional.cross_entropy(model.Forward(batch), labels);
            losses.Add(loss.item<float>());
            loss.backward();
            optimizer.step();
        }
        model.eval();
        Assert.True(losses[^1] < losses[0], $"loss went {losses[0]:F4} → {losses[^1]:F4}");
        foreach (var (path, p) in model.named_parameters())
        {
            bool trainable = path.Contains(".lora_") || path.StartsWith("classifier.modules_to_save.", StringComparison.Ordinal);
            Assert.True(trainable == !Tensors.Same(p, before[path]), $"{path}: changed = {!Tensors.Same(p, before[path])}, expected {trainable}.");
        }

        var directory = TempDirectory.Create();
        peft.Save(directory);
        var keys = SafeTensors.ReadHeader(Path.Combine(directory, "adapter_model.safetensors")).Tensors.Select(t => t.Name).ToHashSet();
        Assert.Contains("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight", keys);
        Assert.Contains("base_model.model.bert.encoder.layer.5.attention.self.value.lora_B.weight", keys);
        Assert.Contains("base_model.model.classifier.weight", keys);
        Assert.Equal(12 * 2 + 2, keys.Count);
    }

    [Fact]
    public void An_attention_prefix_acts_like_tokens_in_front_of_the_sequence()
    {
        // With one layer, a prefix holding the keys and values of the first P tokens of a sequence must give the
        // remaining tokens exactly the vectors they get in the full sequence: prefix first, mask extended, positions after P.
        manual_seed(5);
        using var model = new BertModel(Small with { NumHiddenLayers = 1 });
        model.eval();
        using var _ = no_grad();
        const int P = 3;
        var ids = tensor(new long[] { 2, 7, 9, 11, 4, 5, 6, 8, 12, 13, 3, 1, 2, 3, 4, 0 }, [2, 8]);
        var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0 }, [2, 8]);   // row 1 ends in padding
        var full = model.call(ids, mask, null);                                                        // (2, 8, C)

        var self = (Module<Tensor, Tensor>)model.named_modules().Single(m => m.name == "encoder.layer.0.attention.self.key").module;
        var valueProjection = (Module<Tensor, Tensor>)model.named_modules().Single(m => m.name == "encoder.layer.0.attention.self.value").module;
        var prefixHidden = model.Embeddings.call(ids[.., ..P], null, null);                            // (2, P, C), positions 0..P-1
        Tensor Heads(Tensor y) => y.view(2, P, Small.NumAttentionHeads, Small.HeadSize).transpose(1, 2);
        model.AttentionPrefix = new FixedPrefix(Heads(self.call(prefixHidden)), Heads(valueProjection.call(prefixHidden)));

        var suffix = model.call(ids[.., P..], mask[.., P..], null);                                    // (2, 8 - P, C)
        Tensors.AssertClose(full[.., P..], suffix, 1e-5, "suffix after a prefix vs the same tokens in the full sequence");

        model.AttentionPrefix = null;
        var plain = model.call(ids[.., P..], mask[.., P..], null);
        Tensors.AssertDifferent(suffix, plain, "with and without the prefix");
    }

    [Fact]
    public void A_prefix_of_the_wrong_shape_is_refused_with_the_expected_shape()
    {
        using var model = new BertModel(Small);
        model.AttentionPrefix = new FixedPrefix(zeros(1, 4, 2, 4), zeros(1, 4, 2, 4));
        var error = Assert.Throws<InvalidOperationException>(() => model.call(zeros(3, 5, dtype: ScalarType.Int64), null, null));
        Assert.Contains("expected [3, 4, 2, 4]", error.Message);
    }

    [Fact]
    public void Forward_passes_training_steps_and_sentence_encoding_leave_no_tensors_behind()
    {
        manual_seed(7);
        using var model = new BertForSequenceClassification(new BertModel(Small), numLabels: 2, BertPooling.Mean);
        using var ids = randint(Small.VocabSize, [3, 6]);
        using var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0 }, [3, 6]);
        using var labels = tensor(new long[] { 0, 1, 1 });
        var optimizer = optim.AdamW(model.parameters(), lr: 1e-3);
        var encoder = new SentenceEncoder(minilm.Model, minilm.Tokenizer);   // not disposed: the BERT is shared
        void Round()
        {
            model.train();
            using (var scope = NewDisposeScope())
            {
                optimizer.zero_grad();
                functional.cross_entropy(model.call(ids, mask, null), labels).backward();
                optimizer.step();
            }
            model.eval();
            using (no_grad())
            using (var logits = model.call(ids, mask, null)) { }
            using (var vectors = encoder.Encode(["one sentence", "and a second, longer one"])) { }
        }
        Round();   // warm up: optimizer state and gradients exist from here on
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) Round();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    sealed class FixedPrefix(Tensor key, Tensor value) : IAttentionPrefix
    {
        public int Length => (int)key.shape[2];

        public (Tensor Key, Tensor Value) KeyValues(int layer, long batchSize) => (key, value);
    }
}

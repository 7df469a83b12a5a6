using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Models.Gpt;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public sealed class GptTests
{
    static readonly GptConfig Small = new() { VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, Layers = 2, Heads = 2, MaxPositions = 32 };

    static GptForCausalLM NewModel(GptConfig? config = null)
    {
        manual_seed(0);
        var model = new GptForCausalLM(config ?? Small);
        model.eval();
        return model;
    }

    [Fact]
    public void The_state_dict_keys_are_those_of_a_Llama_causal_language_model()
    {
        var keys = NewModel(Small with { Layers = 1 }).state_dict().Keys.ToList();
        Assert.Equal([
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight"], keys);
    }

    [Fact]
    public void A_tied_head_reuses_the_embedding_matrix_and_counts_it_once()
    {
        using var scope = NewDisposeScope();
        var tied = NewModel();
        var untied = NewModel(Small with { TieWordEmbeddings = false });
        long untiedHead = (long)Small.VocabSize * Small.HiddenSize;
        Assert.Equal(untied.ParameterCount - untiedHead, tied.ParameterCount);
        Assert.Contains("lm_head.weight", untied.state_dict().Keys);
        Assert.DoesNotContain("lm_head.weight", tied.state_dict().Keys);
    }

    [Fact]
    public void The_logits_of_a_position_do_not_depend_on_later_tokens()
    {
        using var scope = NewDisposeScope();
        var model = NewModel();
        var a = tensor(new long[] { 3, 7, 9, 11, 2, 5 }, [1, 6]);
        var b = tensor(new long[] { 3, 7, 9, 30, 31, 32 }, [1, 6]);
        using var _ = no_grad();
        Tensors.AssertClose(model.call(a)[.., ..3], model.call(b)[.., ..3], 1e-5, "logits of the shared first three tokens");
    }

    [Fact]
    public void LoRA_on_q_proj_and_v_proj_attaches_to_exactly_those_projections_in_every_layer()
    {
        var model = NewModel();
        var peft = PeftModel.Create(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 4, LoraAlpha = 8 });
        Assert.Equal([
            "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], peft.Layers.Select(l => l.Path).ToList());
        long expected = 2 * 2 * (4 * Small.HiddenSize + Small.HiddenSize * 4);          // layers x modules x (A + B)
        Assert.Equal(expected, peft.ParameterReport().TrainableParameters);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Assert.Equal([1, 5, Small.VocabSize], model.call(tensor(new long[] { 1, 2, 3, 4, 5 }, [1, 5])).shape);
    }

    [Fact]
    public void All_linear_takes_every_projection_but_not_lm_head()
    {
        var model = NewModel(Small with { TieWordEmbeddings = false });
        var selection = PeftModel.PreviewTargets(model, new LoraConfig { TargetModules = TargetModules.AllLinear });
        Assert.Equal(2 * 7, selection.Matched.Count);
        Assert.DoesNotContain("lm_head", selection.Matched);
        Assert.All(selection.Matched, path => Assert.Matches(@"^model\.layers\.\d\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$", path));
    }

    [Fact]
    public void Greedy_generation_gives_the_same_tokens_every_time()
    {
        var model = NewModel();
        var first = GptGeneration.Generate(model, [5, 6, 7], GenerationOptions.Greedy(12) with { StopAtEndOfText = false });
        var second = GptGeneration.Generate(model, [5, 6, 7], GenerationOptions.Greedy(12) with { StopAtEndOfText = false });
        Assert.Equal(12, first.Count);
        Assert.Equal(first, second);
    }

    [Fact]
    public void Sampling_repeats_with_the_same_seed_and_changes_with_another()
    {
        var model = NewModel();
        var options = GenerationOptions.Sampled(temperature: 1.5, topK: null, seed: 3, maxNewTokens: 20) with { StopAtEndOfText = false };
        var a = GptGeneration.Generate(model, [5], options);
        var b = GptGeneration.Generate(model, [5], options);
        var c = GptGeneration.Generate(model, [5], options with { Seed = 4 });
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Top_k_of_one_sampling_is_greedy_decoding()
    {
        var model = NewModel();
        var greedy = GptGeneration.Generate(model, [9, 8], GenerationOptions.Greedy(10) with { StopAtEndOfText = false });
        var topOne = GptGeneration.Generate(model, [9, 8], GenerationOptions.Sampled(1.0, topK: 1, seed: 7, maxNewTokens: 10) with { StopAtEndOfText = false });
        Assert.Equal(greedy, topOne);
    }

    [Fact]
    public void Generation_never_emits_the_unknown_token_and_keeps_the_context_within_the_positions()
    {
        var model = NewModel(Small with { MaxPositions = 8 });
        var ids = GptGeneration.Generate(model, [1, 2, 3, 4, 5, 6], GenerationOptions.Sampled(2.0, null, 1, 30) with { StopAtEndOfText = false });
        Assert.Equal(30, ids.Count);
        Assert.DoesNotContain(GptTokenizer.UnknownId, ids);
    }

    [Fact]
    public void A_prompt_id_outside_the_vocabulary_is_refused()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => GptGeneration.Generate(NewModel(), [1, Small.VocabSize]));
        Assert.Contains($"Prompt id {Small.VocabSize} is outside", e.Message);
    }

    [Fact]
    public void Sequences_longer_than_the_trained_positions_are_refused_with_the_limit()
    {
        using var scope = NewDisposeScope();
        var model = NewModel(Small with { MaxPositions = 4 });
        var e = Assert.Throws<ArgumentException>(() => model.call(zeros(1, 5, ScalarType.Int64)));
        Assert.Contains("exceed the 4 positions", e.Message);
    }

    // The prefix hook with keys and values that the model itself computes for the first P tokens: running the remaining
    // tokens after that prefix must give the logits those tokens have in the full sequence (positions shifted by P).
    sealed class CachedPrefix(Tensor keys, Tensor values) : IAttentionPrefix
    {
        public int Length => (int)keys.shape[2];

        public (Tensor Key, Tensor Value) KeyValues(int layer, long batchSize) => (keys, values);
    }

    [Fact]
    public void A_prefix_of_cached_keys_and_values_reproduces_the_logits_of_the_whole_sequence()
    {
        using var scope = NewDisposeScope();
        var model = NewModel(Small with { Layers = 1 });
        var ids = tensor(new long[] { 4, 8, 15, 16, 23, 42 - 10 }, [1, 6]);
        using var _ = no_grad();
        var full = model.call(ids);                                                           // (1, 6, V)

        var block = (GptBlock)model.Decoder.Layers[0];
        var hidden = block.InputLayerNorm.call(model.Decoder.EmbedTokens.call(ids[.., ..2]));   // the input of layer 0's attention
        var (_, keys, values) = block.SelfAttention.Project(hidden, positionOffset: 0);       // (1, H, 2, D)
        model.AttentionPrefix = new CachedPrefix(keys, values);
        var rest = model.call(ids[.., 2..]);
        model.AttentionPrefix = null;

        Tensors.AssertClose(full[.., 2..], rest, 1e-5, "logits after a cached prefix");
    }

    [Fact]
    public void A_prefix_of_the_wrong_shape_is_refused_with_the_expected_shape()
    {
        using var scope = NewDisposeScope();
        var model = NewModel();
        model.AttentionPrefix = new CachedPrefix(zeros(1, 2, 3, 5), zeros(1, 2, 3, 5));
        var e = Assert.Throws<InvalidOperationException>(() => model.call(zeros(1, 4, ScalarType.Int64)));
        Assert.Contains("expected [1, 2, 3, 8]", e.Message);
    }

    sealed class FixedPrompt(Tensor embeddings) : IInputPrompt
    {
        public int Length => (int)embeddings.shape[0];

        public Tensor Embeddings(long batchSize) => embeddings.unsqueeze(0).expand(batchSize, -1, -1);
    }

    [Fact]
    public void A_soft_prompt_keeps_the_logits_shape_and_its_positions_count_against_the_limit()
    {
        using var scope = NewDisposeScope();
        var model = NewModel(Small with { MaxPositions = 8 });
        var ids = tensor(new long[] { 4, 8, 15, 16, 23 }, [1, 5]);
        using var _ = no_grad();
        var plain = model.call(ids);
        model.InputPrompt = new FixedPrompt(randn(3, 16));
        var prompted = model.call(ids);
        Assert.Equal(plain.shape, prompted.shape);                                            // (1, 5, V): prompt positions dropped
        Assert.False(plain.allclose(prompted), "the prompt must change what the tokens see");
        var e = Assert.Throws<ArgumentException>(() => model.call(zeros(1, 6, ScalarType.Int64)));
        Assert.Contains("+ a prompt / prefix of 3", e.Message);
        Assert.Contains("at most the last 5 tokens", e.Message);
        // Generation keeps its window inside what the prompt leaves.
        var generated = GptGeneration.Generate(model, [4, 8, 15, 16, 23], GenerationOptions.Greedy(maxNewTokens: 4) with { StopAtEndOfText = false });
        Assert.Equal(4, generated.Count);
        model.InputPrompt = null;
        Tensors.AssertClose(plain, model.call(ids), 0, "logits after the prompt is removed");
    }

    [Fact]
    public void Saving_and_loading_a_model_keeps_every_weight_and_the_tokenizer()
    {
        var tokenizer = GptTokenizer.Build(["a b c, the cat sat on the mat."]);
        var original = new PretrainedGpt(NewModel(Small with { VocabSize = tokenizer.VocabSize }), tokenizer);
        var directory = TempDirectory.Create();
        original.Save(directory, ScalarType.Float32);
        var loaded = PretrainedGpt.Load(directory);
        var state = loaded.Model.state_dict();
        foreach (var (name, value) in original.Model.state_dict())
            Assert.True(Tensors.Same(value, state[name]), name);
        Assert.Equal(tokenizer.Gpt2Ids, loaded.Tokenizer.Gpt2Ids);
    }

    [Fact]
    public void Loading_weights_that_do_not_fit_the_config_names_the_mismatch()
    {
        var tokenizer = GptTokenizer.Build(["the cat sat on the mat."]);
        var directory = TempDirectory.Create();
        new PretrainedGpt(NewModel(Small with { VocabSize = tokenizer.VocabSize }), tokenizer).Save(directory);
        File.WriteAllText(Path.Combine(directory, "config.json"), (Small with { VocabSize = tokenizer.VocabSize, Layers = 3 }).ToJson());
        var e = Assert.Throws<InvalidDataException>(() => PretrainedGpt.Load(directory));
        Assert.Contains("missing model.layers.2.", e.Message);
    }
}

using PeftSharp.Data;
using PeftSharp.Models.Gpt;

namespace PeftSharp.Tests.Models;

public sealed class GptTokenizerTests
{
    static readonly string[] Training = ["The jury said it did not find that many of the city's voters were unhappy.", "The city of Atlanta voted."];

    [Fact]
    public void Encoding_then_decoding_gives_the_text_back()
    {
        var tokenizer = GptTokenizer.Build(Training);
        foreach (var text in Training.Append("Quite different words: zebra, 1961 & \"quotes\"!\nNew line."))
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
    }

    [Fact]
    public void Tokens_that_were_not_kept_are_spelled_with_kept_pieces_instead_of_unknown()
    {
        var tokenizer = GptTokenizer.Build(Training);
        var ids = tokenizer.Encode(" Fulton");
        Assert.DoesNotContain(GptTokenizer.UnknownId, ids);
        Assert.True(ids.Count > 1, "a word the training text never had takes several pieces");
        Assert.Equal(" Fulton", tokenizer.Decode(ids));
    }

    [Fact]
    public void Characters_no_kept_token_covers_become_the_unknown_token()
    {
        var tokenizer = GptTokenizer.Build(Training);
        var ids = tokenizer.Encode("caf\u00e9");
        Assert.Contains(GptTokenizer.UnknownId, ids);
        Assert.Equal("caf" + GptTokenizer.UnknownText, tokenizer.Decode(ids));
    }

    [Fact]
    public void The_vocabulary_keeps_the_special_ids_first_and_only_tokens_seen_often_enough()
    {
        var everything = GptTokenizer.Build(Training, minCount: 1);
        var frequent = GptTokenizer.Build(Training, minCount: 2);
        Assert.Equal(50256, everything.Gpt2Ids[GptTokenizer.EndOfTextId]);
        Assert.Equal(-1, everything.Gpt2Ids[GptTokenizer.UnknownId]);
        Assert.True(frequent.VocabSize < everything.VocabSize);
        Assert.Single(frequent.Encode(" city"));                                  // " city" occurs twice
    }

    [Fact]
    public void As_a_token_encoder_it_ends_every_text_with_end_of_text_and_pads_with_it()
    {
        ITokenEncoder encoder = GptTokenizer.Build(Training);
        Assert.Empty(encoder.Prefix);
        Assert.Equal([GptTokenizer.EndOfTextId], encoder.Suffix);
        Assert.Equal(GptTokenizer.EndOfTextId, encoder.PadId);
    }

    [Fact]
    public void Saving_and_loading_keeps_the_same_ids()
    {
        var tokenizer = GptTokenizer.Build(Training);
        var directory = TempDirectory.Create();
        tokenizer.Save(directory);
        var loaded = GptTokenizer.Load(directory);
        Assert.Equal(tokenizer.Encode(Training[0]), loaded.Encode(Training[0]));
    }

    [Fact]
    public void A_tokenizer_file_that_is_not_a_compact_GPT2_vocabulary_is_refused()
    {
        var directory = TempDirectory.Create();
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), """{"base": "gpt2", "description": "", "gpt2_ids": [1, 2, 3]}""");
        var e = Assert.Throws<InvalidDataException>(() => GptTokenizer.Load(directory));
        Assert.Contains("[50256, -1, ...]", e.Message);
    }
}

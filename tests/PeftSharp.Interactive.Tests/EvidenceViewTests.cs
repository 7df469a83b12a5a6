using System.Text.Json;
using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Analysis;
using PeftSharp.Models;
using PeftSharp.Training;
using Plotly.NET;
using static TorchSharp.torch;

namespace PeftSharp.Interactive.Tests;

/// <summary>The views of multi-seed evidence: comparisons with error bars, loss bands, labelled heatmaps, claim verdicts.</summary>
public sealed class EvidenceViewTests
{
    static EvidenceViewTests()
    {
        FSharpCoreRedirect.Install();
        Formatters.Register();
    }

    static string Html(object value) => value.ToDisplayString(HtmlFormatter.MimeType);

    /// <summary>Text as the views write it (± and × become character references).</summary>
    static string Encoded(string text) => System.Net.WebUtility.HtmlEncode(text);

    static JsonElement[] Traces(GenericChart chart) =>
        JsonDocument.Parse(GenericChart.toFigureJson(chart)).RootElement.GetProperty("data").EnumerateArray().ToArray();

    /// <summary>A real three-step training log of a small MLP regressing noise, seeded.</summary>
    static TrainingLog Log(string name, int seed)
    {
        manual_seed(seed);
        var mlp = new Mlp(16, 32, 8);
        var x = randn(8, 16);
        var y = randn(8, 8);
        return new Trainer().Fit(mlp, _ => new[] { 0, 1, 2 }, _ => nn.functional.mse_loss(mlp.call(x), y), new TrainerOptions(), name: name);
    }

    static MethodComparison ThreeSeeds() => new MethodComparison("ViT on Fashion-MNIST", evaluationExamples: 500)
        .Add(new ComparisonRow("LoRA r=4", 5_000, 139_000, [0.80, 0.82, 0.84], TimeSpan.FromSeconds(12), 1 << 20) { SeedValues = [1, 2, 3] })
        .Add(new ComparisonRow("full FT", 139_000, 139_000, [0.86, 0.87, 0.85], TimeSpan.FromSeconds(25), 1 << 22) { SeedValues = [1, 2, 3] });

    [Fact]
    public void A_multi_seed_comparison_draws_error_bars_of_one_standard_deviation_on_both_charts()
    {
        var comparison = ThreeSeeds();
        var points = Traces(PeftCharts.Comparison(comparison));
        var lora = points.Single(t => t.GetProperty("name").GetString() == "LoRA r=4");
        var error = lora.GetProperty("error_y");
        Assert.Equal("data", error.GetProperty("type").GetString());
        Assert.Equal(0.02, error.GetProperty("array")[0].GetDouble(), 9);

        var bars = Traces(PeftCharts.ScoreBars(comparison));
        var means = bars.Single(t => t.GetProperty("type").GetString() == "bar");
        Assert.Equal([0.02, 0.01], means.GetProperty("error_y").GetProperty("array").EnumerateArray().Select(v => Math.Round(v.GetDouble(), 9)));
        var dots = bars.Single(t => t.GetProperty("name").GetString() == "one seed");
        Assert.Equal(6, dots.GetProperty("y").GetArrayLength());      // every seed's score is shown, not only the mean
        Assert.Contains("3 seeds, 500 evaluation examples", GenericChart.toFigureJson(PeftCharts.ScoreBars(comparison)));
    }

    [Fact]
    public void A_multi_seed_comparison_table_shows_mean_plus_minus_std_the_seeds_and_the_evaluation_size()
    {
        var html = Html(ThreeSeeds());
        Assert.Contains(Encoded("accuracy (mean ± std)"), html);
        Assert.Contains(Encoded("0.82 ± 0.02"), html);
        Assert.Contains("0.8, 0.82, 0.84", html);
        Assert.Contains("3 seeds, 500 evaluation examples", html);
        Assert.Equal(2, html.Split("class=\"" + ChartHtml.ChartClass + "\"").Length - 1);   // trade-off chart and bars
    }

    [Fact]
    public void A_single_seed_comparison_draws_no_error_bars_and_says_one_seed()
    {
        var single = new MethodComparison("one run").Add(new ComparisonRow("LoRA", 1, 10, [0.9], TimeSpan.Zero, null));
        Assert.All(Traces(PeftCharts.Comparison(single)), t => Assert.False(t.TryGetProperty("error_y", out _)));
        var html = Html(single);
        Assert.Contains("1 seed", html);
        Assert.Contains("not measured", html);
        Assert.DoesNotContain(Encoded("mean ± std"), html);
    }

    [Fact]
    public void A_single_seed_accuracy_comparison_with_a_known_evaluation_set_draws_its_sampling_error_and_says_what_it_leaves_out()
    {
        var single = new MethodComparison("MiniLM", evaluationExamples: 400).Add(new ComparisonRow("LoRA", 1, 10, [0.9], TimeSpan.Zero, null));
        var bar = Assert.Single(Traces(PeftCharts.Comparison(single))).GetProperty("error_y").GetProperty("array")[0].GetDouble();
        Assert.Equal(2 * Math.Sqrt(0.9 * 0.1 / 400), bar, 9);   // 0.03
        var html = Html(single);
        Assert.Contains(Encoded("0.9 ± 0.03"), html);
        Assert.Contains("the noise between training seeds is not measured", html);
    }

    [Fact]
    public void The_magnitude_direction_view_draws_a_series_per_method_and_names_its_correlation()
    {
        var scatter = new MagnitudeDirectionScatter("ViT", new Dictionary<string, IReadOnlyList<MagnitudeDirection>>
        {
            ["LoRA"] = [new("a", 0.1, 0.01), new("b", 0.2, 0.02)],
            ["full fine-tuning"] = [new("a", 0.2, 0.01), new("b", 0.1, 0.02)],
        });
        var traces = Traces(PeftCharts.MagnitudeDirection(scatter));
        Assert.Equal(2, traces.Length);
        Assert.Equal("LoRA (r = 1.00)", traces[0].GetProperty("name").GetString());
        Assert.Equal("full fine-tuning (r = -1.00)", traces[1].GetProperty("name").GetString());
        Assert.Equal(0.02, traces[0].GetProperty("x")[1].GetDouble(), 12);   // ΔD on x
        Assert.Contains("correlation of ΔM and ΔD", Html(scatter));
    }

    [Fact]
    public void Loss_bands_draw_a_filled_band_and_a_mean_line_per_regime()
    {
        var (a, b) = (Log("a", 1), Log("b", 2));
        var curves = new LossCurves("MLP", [LossBand.Of("LoRA", [a, b]), LossBand.Of("DoRA", [Log("c", 3)])]);
        var traces = Traces(PeftCharts.LossBands(curves));
        Assert.Equal(6, traces.Length);                                                   // upper edge, lower edge, mean, per regime
        Assert.Equal("tonexty", traces[1].GetProperty("fill").GetString());
        double[] first = [a.Steps[0].Loss, b.Steps[0].Loss];
        double mean = first.Average(), std = Math.Abs(first[0] - first[1]) / Math.Sqrt(2);
        Assert.True(std > 0, "two seeds gave the same first loss");
        Assert.Equal(mean + std, traces[0].GetProperty("y")[0].GetDouble(), 6);
        Assert.Equal(mean - std, traces[1].GetProperty("y")[0].GetDouble(), 6);
        Assert.Equal(mean, traces[2].GetProperty("y")[0].GetDouble(), 6);
        Assert.Equal("LoRA (2 runs)", traces[2].GetProperty("name").GetString());
        var html = Html(curves);
        Assert.Contains(Encoded("final loss (mean ± std)"), html);
        Assert.Contains(ChartHtml.ChartClass, html);
    }

    [Fact]
    public void A_signed_heatmap_is_centred_on_zero_and_an_unsigned_one_is_not()
    {
        var signed = new LabelledHeatmap("scales", ["uniform"], ["t0", "t1"], [[-0.6, 0.3]], "variant", "source", "scale");
        var trace = Traces(PeftCharts.Heatmap(signed)).Single();
        Assert.Equal("heatmap", trace.GetProperty("type").GetString());
        Assert.Equal(0, trace.GetProperty("zmid").GetDouble());
        Assert.Equal(-0.6, trace.GetProperty("zmin").GetDouble(), 9);
        var unsigned = Traces(PeftCharts.Heatmap(new LabelledHeatmap("routing", ["x"], ["a", "b"], [[0.25, 0.75]]))).Single();
        Assert.False(unsigned.TryGetProperty("zmid", out _));
        Assert.Contains(Encoded("1 variant × 2 source"), Html(signed));
    }

    [Fact]
    public void A_claim_verdict_renders_the_claim_the_computed_outcome_and_the_per_seed_differences()
    {
        var verdict = new Claim("full fine-tuning beats LoRA", "Hu et al. 2021").Check(ThreeSeeds(), "full FT", "LoRA r=4");
        var html = Html(verdict);
        Assert.Contains("peftsharp-claim-", html);
        Assert.Contains("full fine-tuning beats LoRA (Hu et al. 2021)", html);
        Assert.Contains(Encoded(verdict.Summary), html);
        Assert.Contains("+0.06, +0.05, +0.01", html);
        Assert.Equal(verdict.ToString(), verdict.ToDisplayString(PlainTextFormatter.MimeType));
    }
}

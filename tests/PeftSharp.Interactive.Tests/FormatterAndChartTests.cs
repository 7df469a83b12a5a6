using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Adapters;
using PeftSharp.Analysis;
using PeftSharp.Methods;
using PeftSharp.Methods.LowRank;
using PeftSharp.Models;
using PeftSharp.Training;
using Plotly.NET;
using static TorchSharp.torch;

namespace PeftSharp.Interactive.Tests;

public sealed class FormatterAndChartTests
{
    static FormatterAndChartTests()
    {
        FSharpCoreRedirect.Install();
        Formatters.Register();
    }

    static PeftModel NewPeft()
    {
        manual_seed(0);
        return PeftModel.Create(new Mlp(16, 32, 8), new LoraConfig { TargetModules = ["lin0", "lin1"], R = 4, InitLoraWeights = LoraInit.Random });
    }

    static string Html(object value) => value.ToDisplayString(HtmlFormatter.MimeType);

    [Fact]
    public void Adapted_model_layer_and_parameter_report_render_as_tables()
    {
        var peft = NewPeft();
        var html = Html(peft);
        Assert.Contains("trainable params", html);
        Assert.Contains("<td style=\"padding:2px 8px\">lin0</td>", html);
        Assert.Contains("lora", html);
        Assert.Equal(peft.ParameterReport().ToString(), peft.ToDisplayString(PlainTextFormatter.MimeType));
        Assert.Contains("active adapters: default", Html(peft.ParameterReport()));
        var layer = Html(peft.Layers[0]);
        Assert.Contains("lin0: Linear [32 x 16]", layer);
        Assert.Contains("can merge", layer);
    }

    [Fact]
    public void Target_selection_lists_matched_and_unmatched_modules()
    {
        var selection = PeftModel.PreviewTargets(new Mlp(), new LoraConfig { TargetModules = ["lin0"] });
        var html = Html(selection);
        Assert.Contains("1 matched", html);
        Assert.Contains("lin1", html);
    }

    [Fact]
    public void A_comparison_renders_a_table_marking_the_best_and_a_log_scale_tradeoff_chart()
    {
        var comparison = new MethodComparison("sentiment")
            .Add(new ComparisonRow("head only", 770, 22_700_000, 0.81, TimeSpan.FromSeconds(20), 10_000_000))
            .Add(new ComparisonRow("LoRA r=8", 74_000, 22_700_000, 0.90, TimeSpan.FromSeconds(60), 300_000_000))
            .Add(new ComparisonRow("full", 22_700_000, 22_700_000, 0.89, TimeSpan.FromSeconds(80), 500_000_000));
        Assert.Equal("LoRA r=8", comparison.Best!.Name);
        Assert.Throws<ArgumentException>(() => comparison.Add(new ComparisonRow("full", 1, 1, 0, TimeSpan.Zero, 0)));
        var html = Html(comparison);
        Assert.Contains("LoRA r=8 (best)", html);
        Assert.Contains("0.326", html);   // 74,000 of 22.7 M trainable, in %
        var figure = GenericChart.toFigureJson(PeftCharts.Comparison(comparison));
        Assert.Contains("\"type\":\"log\"", figure);
        Assert.Contains("head only", figure);
        Assert.Contains(ChartHtml.ChartClass, html);
    }

    [Fact]
    public void Spectrum_chart_has_the_values_energy_and_rank_marker()
    {
        var spectrum = SingularSpectrum.OfDelta(NewPeft(), "lin0");
        var figure = GenericChart.toFigureJson(PeftCharts.Spectrum(spectrum));
        Assert.Contains("cumulative energy", figure);
        Assert.Contains("adapter rank r = 4", figure);
        Assert.Contains("ΔW of adapter", figure);
        var html = Html(spectrum);
        Assert.Contains("effective rank", html);
        Assert.Contains(ChartHtml.ChartClass, html);
    }

    [Fact]
    public void A_chart_built_in_a_notebook_gets_its_title_and_axis_titles()
    {
        var line = Plotly.NET.CSharp.Chart.Line<int, double, string>([1, 2, 3], [0.5, 0.25, 0.125], Name: "deviation");
        var figure = GenericChart.toFigureJson(PeftCharts.Labelled(line, "drift of U_p", "step", "‖UᵀU − I‖"));
        Assert.Contains("drift of U_p", figure);
        Assert.Contains("\"step\"", figure);
        Assert.Contains("deviation", figure);
        Assert.Contains(ChartHtml.ChartClass, ChartHtml.Fragment(PeftCharts.Labelled(line, "t", "x", "y")));
    }

    [Fact]
    public void Rank_allocation_is_bars_and_becomes_a_heatmap_when_ranks_change()
    {
        var allocation = RankAllocation.Of(NewPeft());
        Assert.Contains("\"type\":\"bar\"", GenericChart.toFigureJson(PeftCharts.RankAllocation(allocation)));
        var changing = allocation.WithSnapshot(10, [2, 6]).WithSnapshot(20, [1, 7]);
        var heatmap = GenericChart.toFigureJson(PeftCharts.RankAllocation(changing));
        Assert.Contains("\"type\":\"heatmap\"", heatmap);
        Assert.Contains("step 20", heatmap);
        Assert.Contains("total rank 8", Html(changing));
    }

    [Fact]
    public void A_training_profile_renders_its_phases_memory_and_modules_and_profiles_compare_in_one_chart()
    {
        var peft = NewPeft();
        var x = randn(32, 16);
        var lora = TrainingProfile.Measure(peft.Model, () => ((nn.Module<Tensor, Tensor>)peft.Model).call(x).pow(2).mean(), steps: 1, title: "LoRA");
        manual_seed(0);
        var plain = new Mlp(16, 32, 8);
        var full = TrainingProfile.Measure(plain, () => plain.call(x).pow(2).mean(), steps: 1, title: "full fine-tuning");

        var html = Html(lora);
        Assert.Contains("optimizer step", html);
        Assert.Contains("lin0", html);
        Assert.Equal(3, html.Split("class=\"" + ChartHtml.ChartClass + "\"").Length - 1);   // phases, memory, modules
        Assert.Contains("\"barmode\":\"stack\"", GenericChart.toFigureJson(PeftCharts.ProfileModules(lora)));
        var memory = GenericChart.toFigureJson(PeftCharts.ProfileMemory(lora, full));
        Assert.Contains("\"name\":\"LoRA\"", memory);
        Assert.Contains("\"name\":\"full fine-tuning\"", memory);
        Assert.Contains("optimizer state", memory);
    }

    [Fact]
    public void Routing_is_one_heatmap_per_layer()
    {
        var routing = new RoutingWeights(
        [
            new RoutingLayer("a", ["t0", "t1"], ["e0", "e1"], [[1.0, 0.0], [0.5, 0.5]]),
            new RoutingLayer("b", ["t0", "t1"], ["e0", "e1"], [[0.0, 1.0], [0.5, 0.5]]),
        ], "task");
        var charts = PeftCharts.Routing(routing);
        Assert.Equal(2, charts.Count);
        Assert.Contains("\"type\":\"heatmap\"", GenericChart.toFigureJson(charts[1]));
        var html = Html(routing);
        Assert.Contains("e0 0.750", html);
        Assert.Equal(3, html.Split("class=\"" + ChartHtml.ChartClass + "\"").Length - 1);   // the loads, then a heatmap per layer
    }

    [Fact]
    public void Expert_load_is_one_bar_per_expert_of_each_layer_with_the_even_split_marked()
    {
        // Layer "a" has 3 experts, "b" one: 3 bar traces (expert 2 only at "a"), and the 1 / E markers.
        var load = ExpertLoad.Of("load", [new RoutingWeights(
        [
            new RoutingLayer("a", ["t0", "t1"], ["e0", "e1", "e2"], [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]),
            new RoutingLayer("b", ["t0", "t1"], ["e0"], [[1.0], [1.0]]),
        ])]);
        var figure = GenericChart.toFigureJson(PeftCharts.ExpertLoad(load));
        Assert.Equal(3, figure.Split("\"name\":\"expert ").Length - 1);
        Assert.Contains("\"type\":\"bar\"", figure);
        Assert.Contains("even split 1 / E", figure);
        var html = Html(load);
        Assert.Contains("largest load / even split 2.25, 1.00", html);   // a: 0.75 x 3
        Assert.Contains(ChartHtml.ChartClass, html);
    }

    [Fact]
    public void Training_log_shows_totals_and_the_loss_curve()
    {
        var peft = NewPeft();
        var x = randn(8, 16);
        var y = randn(8, 8);
        var log = new Trainer().Fit(peft.Model, _ => new[] { 0, 1 }, _ => nn.functional.mse_loss(peft.Forward(x), y),
            new TrainerOptions { Epochs = 3 }, () => new Dictionary<string, double> { ["val_loss"] = 0.5 }, name: "unit");
        var html = Html(log);
        Assert.Contains("unit: 6 steps", html);
        Assert.Contains("val_loss", html);
        Assert.Contains("training loss", GenericChart.toFigureJson(PeftCharts.Loss(log)));
    }

    [Fact]
    public void Charts_made_in_cells_render_with_the_offline_first_fragment()
    {
        var chart = Plotly.NET.CSharp.Chart.Line<int, int, string>([1, 2], [3, 4]);
        var html = Html(chart);
        Assert.Contains("window.Plotly", html);
        Assert.Contains("newPlot", html);
        Assert.StartsWith("<script", ChartHtml.PlotlyScriptTag());
        Assert.True(ChartHtml.PlotlyJs().Length > 1_000_000);
        // Nothing is fetched: no CDN, no require.js paths, no URL at all in a chart's fragment.
        Assert.DoesNotContain("http", html);
        Assert.DoesNotContain("requirejs", html);
        Assert.Contains("trust the notebook", html);          // what an untrusted notebook shows instead
    }

    [Fact]
    public void The_plotly_loader_carries_plotly_js_once_and_draws_the_waiting_charts()
    {
        var loader = ChartHtml.PlotlyLoader();
        Assert.StartsWith($"<script type=\"text/javascript\" {ChartHtml.LoaderAttribute}=\"{ChartHtml.PlotlyVersion()}\">", loader);
        Assert.Contains(ChartHtml.PlotlyJs(), loader);
        Assert.Contains("typeof window.Plotly === 'undefined'", loader);   // a second copy on the page does nothing
        Assert.Contains("peftsharpPending", loader);
        Assert.Matches(@"^\d+\.\d+\.\d+$", ChartHtml.PlotlyVersion());
    }

    [Fact]
    public void Live_view_outside_a_notebook_records_and_renders_progress()
    {
        var peft = NewPeft();
        var trainer = new Trainer();
        var x = randn(8, 16);
        var y = randn(8, 8);
        var view = LiveTrainingView.Show(trainer, "outside", TimeSpan.Zero);
        trainer.Fit(peft.Model, _ => new[] { 0 }, _ => nn.functional.mse_loss(peft.Forward(x), y), new TrainerOptions { Epochs = 3 });
        view.Dispose();
        Assert.Contains("step 3/3", view.Html);
        Assert.Contains("ETA", view.Html);
        Assert.Contains("<div class=\"peftsharp-trains\">trains ", view.Html);   // what trains: the adapter, not the base
        Assert.DoesNotContain("every parameter", view.Html);
        Assert.True(view.Updates >= 3);
    }

    [Fact]
    public void Methods_table_lists_every_method_with_its_parameters()
    {
        var html = HtmlViews.Methods(MethodList.All);
        foreach (var method in MethodList.All) Assert.Contains($">{method.Name}<", html);
        Assert.Contains("--alpha", html);
        Assert.Contains("PeftSharp", PeftKernelExtension.LoadedMessage(1));
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.Formatting;
using PeftSharp.Training;

namespace PeftSharp.Interactive;

/// <summary>
/// A training view that updates in place while <c>Trainer.Fit</c> runs: a loss curve, a progress line
/// (step, loss, steps/s, elapsed, ETA) and what trains (<see cref="TrainingProgress.Trains"/>, so a run that trains the
/// whole base by mistake shows it). It listens to <see cref="Trainer.Progress"/> and redraws at most every
/// <c>refresh</c> (and at the last step). The curve is inline SVG, so updates need no script and it renders anywhere.
/// <code>using (LiveTrainingView.Show(trainer, "LoRA r=4")) log = trainer.Fit(...);</code>
/// </summary>
public sealed class LiveTrainingView : IDisposable
{
    const int Width = 640, Height = 180, MaxPoints = 400;

    readonly Trainer _trainer;
    readonly string _title;
    readonly TimeSpan _refresh;
    readonly DisplayedValue? _display;
    readonly List<(int Step, double Loss)> _losses = [];
    readonly Stopwatch _sinceDraw = Stopwatch.StartNew();
    TrainingProgress? _last;
    bool _disposed;

    LiveTrainingView(Trainer trainer, string title, TimeSpan refresh, KernelInvocationContext? context)
    {
        _trainer = trainer;
        _title = title;
        _refresh = refresh;
        if (context is not null)
            _display = KernelInvocationContextExtensions.Display(context, new PeftHtml(Render()), HtmlFormatter.MimeType);
        _trainer.Progress += OnProgress;
    }

    /// <summary>How many times the view was redrawn (after the first display).</summary>
    public int Updates { get; private set; }

    /// <summary>The HTML shown now.</summary>
    public string Html => Render();

    /// <summary>Shows a live view of <paramref name="trainer"/>'s next run in the current cell's output.
    /// Outside a notebook it just records (nothing is displayed).</summary>
    public static LiveTrainingView Show(Trainer trainer, string title = "training", TimeSpan? refresh = null)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        return new LiveTrainingView(trainer, title, refresh ?? TimeSpan.FromMilliseconds(250), KernelInvocationContext.Current);
    }

    void OnProgress(TrainingProgress p)
    {
        _last = p;
        _losses.Add((p.Step, p.Loss));
        if (p.Step == p.TotalSteps || _sinceDraw.Elapsed >= _refresh) Draw();
    }

    void Draw()
    {
        _sinceDraw.Restart();
        Updates++;
        _display?.Update(new PeftHtml(Render()));
    }

    /// <summary>Stops listening and draws the final state.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _trainer.Progress -= OnProgress;
        if (_last is not null) Draw();
    }

    string Render()
    {
        var html = new StringBuilder("<div class=\"peftsharp-live\" style=\"font-family:monospace\">");
        html.Append("<div><b>").Append(WebUtility.HtmlEncode(_title)).Append("</b></div>");
        if (_last is { Trains.Length: > 0 } last)
            html.Append("<div class=\"peftsharp-trains\">trains ").Append(WebUtility.HtmlEncode(last.Trains)).Append("</div>");
        html.Append(ProgressLine(_last));
        html.Append(Svg());
        return html.Append("</div>").ToString();
    }

    /// <summary>The progress line and bar for one progress report (null: waiting for the first step).</summary>
    internal static string ProgressLine(TrainingProgress? p)
    {
        if (p is null) return "<div>waiting for the first step...</div>";
        int percent = (int)Math.Round(100 * p.Fraction);
        var text = string.Create(CultureInfo.InvariantCulture,
            $"step {p.Step}/{p.TotalSteps} · loss {p.Loss:0.0000} · {p.StepsPerSecond:0.0} steps/s · elapsed {Clock(p.Elapsed)} · ETA {Clock(p.Remaining)} · lr {p.LearningRate:G3}");
        if (p.LatestEvaluation is { } e)
            text += " · " + string.Join(", ", e.Metrics.Select(m => string.Create(CultureInfo.InvariantCulture, $"{m.Key} {m.Value:0.0000}")));
        return $"<div class=\"peftsharp-progress\" style=\"width:{Width}px;background:#eee;height:6px\"><div style=\"width:{percent}%;background:#4c78a8;height:6px\"></div></div>" +
               $"<div class=\"peftsharp-progress-line\">{WebUtility.HtmlEncode(text)}</div>";
    }

    static string Clock(TimeSpan t) => t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : t.ToString(@"mm\:ss", CultureInfo.InvariantCulture);

    string Svg()
    {
        if (_losses.Count == 0) return "";
        // At most MaxPoints points: every n-th step (the last one always).
        int stride = Math.Max(1, (int)Math.Ceiling(_losses.Count / (double)MaxPoints));
        var points = _losses.Where((_, i) => i % stride == 0 || i == _losses.Count - 1).ToList();
        double minLoss = points.Min(p => p.Loss), maxLoss = points.Max(p => p.Loss);
        if (maxLoss - minLoss < 1e-12) maxLoss = minLoss + 1;
        int total = Math.Max(_last?.TotalSteps ?? points[^1].Step, 1);
        const int pad = 36;
        string X(int step) => (pad + (Width - pad - 8) * (step / (double)total)).ToString("0.0", CultureInfo.InvariantCulture);
        string Y(double loss) => (8 + (Height - 28) * (1 - (loss - minLoss) / (maxLoss - minLoss))).ToString("0.0", CultureInfo.InvariantCulture);
        var polyline = string.Join(" ", points.Select(p => $"{X(p.Step)},{Y(p.Loss)}"));
        string Label(double v) => v.ToString("G3", CultureInfo.InvariantCulture);
        return $"<svg class=\"peftsharp-loss\" width=\"{Width}\" height=\"{Height}\" xmlns=\"http://www.w3.org/2000/svg\" style=\"font:10px monospace\">" +
               $"<rect x=\"{pad}\" y=\"8\" width=\"{Width - pad - 8}\" height=\"{Height - 28}\" fill=\"none\" stroke=\"#ccc\"/>" +
               $"<polyline fill=\"none\" stroke=\"#4c78a8\" stroke-width=\"1.5\" points=\"{polyline}\"/>" +
               $"<text x=\"2\" y=\"14\">{Label(maxLoss)}</text><text x=\"2\" y=\"{Height - 20}\">{Label(minLoss)}</text>" +
               $"<text x=\"{pad}\" y=\"{Height - 6}\">0</text><text x=\"{Width - 60}\" y=\"{Height - 6}\">step {total}</text>" +
               $"<text x=\"{Width / 2 - 20}\" y=\"{Height - 6}\">loss</text></svg>";
    }
}

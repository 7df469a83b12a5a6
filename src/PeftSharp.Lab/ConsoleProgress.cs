using PeftSharp.Training;

namespace PeftSharp.Lab;

/// <summary>A one-line progress bar for <see cref="Trainer.Progress"/>: redrawn in place on a terminal, a few lines
/// in total when the output is redirected (logs, CI).</summary>
sealed class ConsoleProgress(string label)
{
    int _lastPrintedPercent = -1;

    public void Report(TrainingProgress p)
    {
        int percent = (int)(100 * p.Fraction);
        var line = $"{label} [{new string('#', percent / 4),-25}] {p.Step}/{p.TotalSteps}  loss {p.Loss:0.0000}  {p.StepsPerSecond:0.0} steps/s  ETA {p.Remaining:mm\\:ss}";
        if (!Console.IsOutputRedirected)
        {
            Console.Write("\r" + line);
            if (p.Step == p.TotalSteps) Console.WriteLine();
        }
        else if (percent / 25 != _lastPrintedPercent / 25 || p.Step == p.TotalSteps)
        {
            Console.WriteLine(line);
        }
        _lastPrintedPercent = percent;
    }
}

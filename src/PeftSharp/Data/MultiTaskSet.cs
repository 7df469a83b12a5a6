using Microsoft.Data.Analysis;
using static TorchSharp.torch;

namespace PeftSharp.Data;

/// <summary>The synthetic multi-task suite (<see cref="Datasets.MultiTask"/>) as batches of task ids, inputs, regression
/// targets and class labels.</summary>
public sealed class MultiTaskSet : BatchSource<MultiTaskTensors>
{
    readonly long[] _tasks;
    readonly float[][] _inputs;
    readonly float[][] _targets;
    readonly long[] _labels;

    MultiTaskSet(long[] tasks, float[][] inputs, float[][] targets, long[] labels) =>
        (_tasks, _inputs, _targets, _labels) = (tasks, inputs, targets, labels);

    public override int Count => _tasks.Length;

    public int InputSize => _inputs.Length;

    public int TargetSize => _targets.Length;

    /// <summary>Number of distinct task ids (largest id + 1).</summary>
    public int TaskCount => (int)_tasks.Max() + 1;

    public long Task(int row) => _tasks[row];

    /// <summary>Reads columns <c>Task</c>, <c>X0</c>.., <c>Y0</c>.. and <c>Label</c>.</summary>
    public static MultiTaskSet FromDataFrame(DataFrame frame)
    {
        var tasks = FrameColumns.Longs(frame, "Task", nameof(frame));
        var inputs = Numbered(frame, "X");
        var targets = Numbered(frame, "Y");
        var labels = FrameColumns.Labels(frame, "Label", targets.Length, nameof(frame));
        return new MultiTaskSet(tasks, inputs, targets, labels);
    }

    static float[][] Numbered(DataFrame frame, string prefix)
    {
        var columns = new List<float[]>();
        while (frame.Columns.IndexOf($"{prefix}{columns.Count}") >= 0)
            columns.Add(FrameColumns.Floats(frame, $"{prefix}{columns.Count}", nameof(frame)));
        if (columns.Count == 0) throw new ArgumentException($"The data frame has no columns {prefix}0, {prefix}1, ...", nameof(frame));
        return [.. columns];
    }

    protected internal override MultiTaskTensors MakeTensors(IReadOnlyList<int> rows, Device? device)
    {
        Tensor Matrix(float[][] columns)
        {
            var values = new float[rows.Count * columns.Length];
            for (int b = 0; b < rows.Count; b++)
                for (int c = 0; c < columns.Length; c++) values[b * columns.Length + c] = columns[c][rows[b]];
            return tensor(values, [rows.Count, columns.Length], ScalarType.Float32, device);
        }
        return new MultiTaskTensors(tensor(rows.Select(r => _tasks[r]).ToArray(), ScalarType.Int64, device), Matrix(_inputs), Matrix(_targets),
                                    tensor(rows.Select(r => _labels[r]).ToArray(), ScalarType.Int64, device));
    }
}

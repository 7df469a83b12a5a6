using Microsoft.Data.Analysis;

namespace PeftSharp.Data;

/// <summary>Reading whole columns of a <see cref="DataFrame"/> into arrays, with errors that name the column and list the others.</summary>
static class FrameColumns
{
    public static DataFrameColumn Get(DataFrame frame, string name, string argument)
    {
        ArgumentNullException.ThrowIfNull(frame);
        int index = frame.Columns.IndexOf(name);
        if (index < 0)
            throw new ArgumentException($"The data frame has no column '{name}'; its columns are {string.Join(", ", frame.Columns.Take(12).Select(c => c.Name))}{(frame.Columns.Count > 12 ? ", ..." : "")}.", argument);
        return frame.Columns[index];
    }

    public static string[] Strings(DataFrame frame, string name, string argument)
    {
        var column = Get(frame, name, argument);
        var values = new string[column.Length];
        for (long i = 0; i < column.Length; i++)
            values[i] = column[i] as string ?? throw new ArgumentException($"Row {i} of column '{name}' is empty (or not text).", argument);
        return values;
    }

    public static long[] Longs(DataFrame frame, string name, string argument)
    {
        var column = Get(frame, name, argument);
        var values = new long[column.Length];
        for (long i = 0; i < column.Length; i++)
            values[i] = column[i] switch
            {
                null => throw new ArgumentException($"Row {i} of column '{name}' is empty.", argument),
                string s => throw new ArgumentException($"Column '{name}' holds text ('{s}'); give the column of label ids (e.g. 'Label').", argument),
                var v => Convert.ToInt64(v, System.Globalization.CultureInfo.InvariantCulture),
            };
        return values;
    }

    public static float[] Floats(DataFrame frame, string name, string argument)
    {
        var column = Get(frame, name, argument);
        var values = new float[column.Length];
        for (long i = 0; i < column.Length; i++)
            values[i] = column[i] is { } v and not string ? Convert.ToSingle(v, System.Globalization.CultureInfo.InvariantCulture)
                : throw new ArgumentException($"Row {i} of column '{name}' is empty or not a number.", argument);
        return values;
    }

    /// <summary>The labels of <paramref name="name"/>, checked against <paramref name="classes"/> when given.</summary>
    public static long[] Labels(DataFrame frame, string name, int? classes, string argument)
    {
        var labels = Longs(frame, name, argument);
        if (classes is int n && labels.FirstOrDefault(l => l < 0 || l >= n, 0) is var bad && (bad < 0 || bad >= n))
            throw new ArgumentException($"Column '{name}' has the label {bad}, outside 0..{n - 1}.", argument);
        return labels;
    }
}

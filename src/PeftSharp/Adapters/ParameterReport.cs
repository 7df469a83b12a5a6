namespace PeftSharp.Adapters;

/// <summary>One adapter at one layer, for summaries. <paramref name="Note"/> says what a reader should know (e.g. a
/// rank above min(out, in), which PEFT accepts but which adds parameters and no expressiveness).</summary>
public sealed record AdapterLayerInfo(string Path, string BaseType, long[] BaseShape, string AdapterName, string Method, int? Rank,
                                      long Parameters, bool Active, bool Merged, string? Note = null);

/// <summary>Trainable versus total parameters of an adapted model (PEFT's <c>print_trainable_parameters</c>), with
/// the memory they take and one row per adapter per layer.</summary>
public sealed record ParameterReport(long TrainableParameters, long AllParameters, long TrainableBytes, long AllBytes,
                                     IReadOnlyList<AdapterLayerInfo> Layers, IReadOnlyList<string> ActiveAdapters, bool AdaptersDisabled)
{
    public double TrainablePercent => AllParameters == 0 ? 0 : 100.0 * TrainableParameters / AllParameters;

    /// <summary>PEFT's line: "trainable params: 448 || all params: 2,312 || trainable%: 19.3772".</summary>
    public override string ToString() =>
        $"trainable params: {TrainableParameters:N0} || all params: {AllParameters:N0} || trainable%: {TrainablePercent:0.0000}";
}

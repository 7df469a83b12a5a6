using System.Text.Json.Serialization;

namespace PeftSharp.Methods.Decomposition;

/// <summary>
/// Hugging Face PEFT's <c>CordaConfig</c> (the <c>corda_config</c> field of a <c>LoraConfig</c> with
/// <c>init_lora_weights="corda"</c>), field for field. PeftSharp uses <see cref="CordaMethod"/>; the covariance comes from
/// the calibration batches given to <c>AddAdapter</c> (<see cref="PeftSharp.Adapters.Calibration"/>), so the cache and
/// covariance files, <c>verbose</c>, <c>use_float16_for_covariance</c> and <c>prune_temporary_fields</c> are kept for
/// the file only (refused where they would ask for something this library does not do).
/// </summary>
public sealed record CordaConfig
{
    /// <summary><c>cache_file</c>: PEFT's SVD cache file (not used here; must be null).</summary>
    [JsonPropertyName("cache_file")]
    public string? CacheFile { get; init; }

    /// <summary><c>covariance_file</c>: PEFT's covariance file (not used here; must be null).</summary>
    [JsonPropertyName("covariance_file")]
    public string? CovarianceFile { get; init; }

    /// <summary><c>corda_method</c>: "ipm" (instruction-previewed: the r largest components of SVD(W C) adapt, the
    /// paper's IPA) or "kpm" (knowledge-preserved: the r smallest adapt and the large ones stay frozen, the paper's KPA).</summary>
    [JsonPropertyName("corda_method")]
    public string CordaMethod { get; init; } = "ipm";

    /// <summary><c>verbose</c>: PEFT prints progress (no effect here).</summary>
    [JsonPropertyName("verbose")]
    public bool Verbose { get; init; }

    /// <summary><c>use_float16_for_covariance</c>: PEFT's memory saving (not used here: the covariance is float64).</summary>
    [JsonPropertyName("use_float16_for_covariance")]
    public bool UseFloat16ForCovariance { get; init; }

    /// <summary><c>prune_temporary_fields</c>: PEFT drops its temporary module fields (always so here).</summary>
    [JsonPropertyName("prune_temporary_fields")]
    public bool PruneTemporaryFields { get; init; } = true;
}

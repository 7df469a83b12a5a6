using TorchSharp;

namespace PeftSharp.Adapters;

/// <summary>One evaluation offered to an <see cref="AdapterBank"/>: the domain, the training step, the validation
/// score, and whether the checkpoint became the domain's best when it was offered.</summary>
public sealed record BankEntry(string Domain, int Step, double Score, bool Kept);

/// <summary>
/// An adapter bank for language- or domain-dependent adapters (LDA: Language-Dependent Adapters, "Efficient Adapter
/// Finetuning for Tail Languages in Streaming Multilingual ASR"): one adapter per domain, all trained together, rows
/// routed by their domain (per-row adapter names). Domains peak at different steps (the "asynchronous peak
/// performance" of tail languages), so a single final checkpoint is too late for some domains and too early for
/// others. During training each domain's adapter is evaluated on that domain's validation data and offered here;
/// the bank keeps a host copy of each domain's best checkpoint (by <see cref="HigherIsBetter"/>), and
/// <see cref="Assemble"/> writes them back: the final model holds each domain's adapter from its own best step.
/// </summary>
/// <remarks>Memory: one copy of each domain's adapter parameters on the host (<see cref="AdapterState"/>), replaced
/// when a better checkpoint arrives. Ties keep the earlier checkpoint.</remarks>
public sealed class AdapterBank(bool higherIsBetter = false) : IDisposable
{
    readonly Dictionary<string, (BankEntry Entry, string Adapter, Dictionary<string, torch.Tensor> State)> _best = [];
    readonly List<BankEntry> _history = [];

    /// <summary>Whether a higher score is better (accuracy) or a lower one (loss, perplexity: the default).</summary>
    public bool HigherIsBetter { get; } = higherIsBetter;

    /// <summary>Every offer in order, kept or not.</summary>
    public IReadOnlyList<BankEntry> History => _history;

    /// <summary>The domains offered so far, in the order they first came.</summary>
    public IReadOnlyList<string> Domains => _best.Keys.ToList();

    /// <summary>The best checkpoint of <paramref name="domain"/> so far.</summary>
    public BankEntry Best(string domain) =>
        _best.TryGetValue(domain, out var best) ? best.Entry
        : throw new KeyNotFoundException($"The bank has no checkpoint of domain '{domain}'; it holds {(_best.Count == 0 ? "none" : string.Join(", ", _best.Keys.Select(d => $"'{d}'")))}.");

    /// <summary>
    /// Offers adapter <paramref name="adapterName"/> as it is now, scored <paramref name="score"/> on
    /// <paramref name="domain"/>'s validation data at training step <paramref name="step"/>. A copy is kept when it is
    /// the domain's first or beats its best so far; returns whether it was kept. A domain stays with the adapter it
    /// was first offered from.
    /// </summary>
    public bool Offer(string domain, PeftModel peft, string adapterName, int step, double score)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(domain);
        ArgumentNullException.ThrowIfNull(peft);
        if (!double.IsFinite(score))
            throw new ArgumentOutOfRangeException(nameof(score), score, $"The validation score of domain '{domain}' at step {step} is not finite; a bank ranks checkpoints by a finite score.");
        if (_best.TryGetValue(domain, out var current) && current.Adapter != adapterName)
            throw new ArgumentException($"Domain '{domain}' was offered from adapter '{current.Adapter}' before, now from '{adapterName}'; one domain has one adapter.", nameof(adapterName));
        bool better = current.State is null || (HigherIsBetter ? score > current.Entry.Score : score < current.Entry.Score);
        var entry = new BankEntry(domain, step, score, better);
        if (better)
        {
            var state = AdapterState.Capture(peft, adapterName);
            if (current.State is not null) AdapterState.DisposeAll(current.State.Values);
            _best[domain] = (entry, adapterName, state);
        }
        _history.Add(entry);
        return better;
    }

    /// <summary>The scores offered for <paramref name="domain"/> by step.</summary>
    public IReadOnlyList<(int Step, double Score)> Curve(string domain) =>
        _history.Where(e => e.Domain == domain).Select(e => (e.Step, e.Score)).ToList();

    /// <summary>Writes every domain's best checkpoint into its adapter in <paramref name="peft"/> (in place), so the
    /// model holds each domain's adapter from its own best step.</summary>
    public void Assemble(PeftModel peft)
    {
        ArgumentNullException.ThrowIfNull(peft);
        if (_best.Count == 0) throw new InvalidOperationException("The bank is empty: offer checkpoints during training first.");
        // Every adapter is checked before the first is written, so a bank that does not fit changes nothing.
        foreach (var (domain, best) in _best)
            AdapterState.Check(AdapterState.Live(peft, best.Adapter), best.State, $"adapter '{best.Adapter}' (domain '{domain}')");
        foreach (var best in _best.Values) AdapterState.Restore(peft, best.Adapter, best.State);
    }

    /// <summary>Frees the host copies.</summary>
    public void Dispose()
    {
        foreach (var best in _best.Values) AdapterState.DisposeAll(best.State.Values);
        _best.Clear();
    }
}

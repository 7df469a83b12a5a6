using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>
/// Many adapters for one base, more than fit on the model's device: each is kept on the host (CPU) and attached to
/// the model (its values copied to the model's device) on first use; when the adapters attached by the pool would take
/// more than <see cref="ByteBudget"/> bytes, the least recently used ones not needed right now are detached, their
/// current values copied back to the host first (so training between uses is kept). S-LoRA's unified paging, in its
/// simplest form: an LRU cache of whole adapters.
/// </summary>
/// <remarks>Adapters are attached and detached through the model's ordinary path (<see cref="PeftModel.AddAdapter(string,
/// AdapterConfig, IReadOnlyDictionary{string, Tensor}, bool)"/> and <see cref="PeftModel.DeleteAdapter"/>), so every check
/// of a load applies. Adapters the model holds that were not registered here are not the pool's and are never
/// detached.</remarks>
public sealed class AdapterPool : IDisposable
{
    readonly PeftModel _peft;
    readonly Dictionary<string, Entry> _entries = [];
    readonly LinkedList<string> _recent = [];   // resident pooled adapters, most recently used first

    sealed class Entry(AdapterConfig config, Dictionary<string, Tensor> host)
    {
        public AdapterConfig Config { get; } = config;
        public Dictionary<string, Tensor> Host { get; set; } = host;
        public long Bytes => Host.Values.Sum(t => t.numel() * t.ElementSize);
    }

    /// <param name="peft">The model the adapters go into.</param>
    /// <param name="byteBudget">The most bytes of adapter tensors the pool keeps attached at once.</param>
    public AdapterPool(PeftModel peft, long byteBudget)
    {
        ArgumentNullException.ThrowIfNull(peft);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(byteBudget);
        _peft = peft;
        ByteBudget = byteBudget;
    }

    public long ByteBudget { get; }

    /// <summary>The registered adapters.</summary>
    public IReadOnlyList<string> Names => _entries.Keys.ToList();

    /// <summary>The pooled adapters attached to the model now, most recently used first.</summary>
    public IReadOnlyList<string> Resident => _recent.ToList();

    /// <summary>Bytes of the pooled adapters attached now.</summary>
    public long ResidentBytes => _recent.Sum(n => _entries[n].Bytes);

    /// <summary>How many times an adapter was attached (a miss) and detached, for reports.</summary>
    public int Loads { get; private set; }

    public int Evictions { get; private set; }

    /// <summary>Registers adapter <paramref name="name"/> with its values (keyed as the file keys them), copied to the
    /// host. Nothing is attached yet.</summary>
    public void Register(string name, AdapterConfig config, IReadOnlyDictionary<string, Tensor> tensors)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tensors);
        if (_entries.ContainsKey(name) || _peft.AdapterNames.Contains(name))
            throw new ArgumentException($"An adapter named '{name}' is already {(_entries.ContainsKey(name) ? "in the pool" : "in the model")}; choose another name.", nameof(name));
        if (string.IsNullOrWhiteSpace(name) || name.Contains('.') || name.Contains('/') || name == AdapterLayer.BaseOnly)
            throw new ArgumentException($"'{name}' cannot name an adapter: use a non-empty name without '.', '/', and other than '{AdapterLayer.BaseOnly}'.", nameof(name));
        config.Validate();
        var host = tensors.ToDictionary(p => p.Key, p => p.Value.detach().to(CPU).clone().DetachFromDisposeScope());
        var entry = new Entry(config, host);
        long bytes = entry.Bytes;
        if (bytes > ByteBudget)
        {
            foreach (var t in host.Values) t.Dispose();
            throw new ArgumentException($"Adapter '{name}' takes {bytes:N0} bytes, more than the pool's budget of {ByteBudget:N0} bytes; raise the budget.", nameof(tensors));
        }
        _entries[name] = entry;
    }

    /// <summary>Registers the PEFT adapter directory <paramref name="directory"/> as <paramref name="name"/>.</summary>
    public void Register(string name, string directory)
    {
        var config = AdapterFiles.ReadConfig(directory);
        var values = IO.SafeTensors.Load(Path.Combine(directory, AdapterFiles.WeightsFileName));
        try
        {
            Register(name, config, values);
        }
        finally
        {
            foreach (var t in values.Values) t.Dispose();
        }
    }

    /// <summary>Makes <paramref name="names"/> (<see cref="AdapterLayer.BaseOnly"/> and repeats allowed) attached, detaching
    /// the least recently used others as the budget requires. Fails, changing nothing, when they cannot fit together.</summary>
    public void Ensure(IEnumerable<string> names)
    {
        var wanted = names.Where(n => n != AdapterLayer.BaseOnly).Distinct().ToList();
        var unknown = wanted.Where(n => !_entries.ContainsKey(n) && !_peft.AdapterNames.Contains(n)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Unknown adapter(s) {string.Join(", ", unknown.Select(u => $"'{u}'"))}; the pool holds {(_entries.Count == 0 ? "none" : string.Join(", ", _entries.Keys))}.", nameof(names));
        var pooled = wanted.Where(_entries.ContainsKey).ToList();
        long needed = pooled.Sum(n => _entries[n].Bytes);
        if (needed > ByteBudget)
            throw new InvalidOperationException($"The {pooled.Count} pooled adapters asked for together take {needed:N0} bytes, more than the budget of {ByteBudget:N0}; split the batch or raise the budget.");

        long missing = pooled.Where(n => !_recent.Contains(n)).Sum(n => _entries[n].Bytes);
        while (ResidentBytes + missing > ByteBudget)
            Evict(_recent.Last(n => !pooled.Contains(n)));
        foreach (var name in pooled)
        {
            if (_recent.Contains(name)) _recent.Remove(name);
            else
            {
                _peft.AddAdapter(name, _entries[name].Config, _entries[name].Host);
                Loads++;
            }
            _recent.AddFirst(name);
        }
    }

    /// <summary>Runs a mixed batch: row i through adapter <c>rowNames[i]</c>, attaching what it needs first.</summary>
    public Tensor Forward(Tensor input, IReadOnlyList<string> rowNames)
    {
        Ensure(rowNames);
        return _peft.Forward(input, rowNames);
    }

    void Evict(string name)
    {
        var entry = _entries[name];
        var current = _peft.AdapterTensors(name);
        _peft.DeleteAdapter(name);
        foreach (var t in entry.Host.Values) t.Dispose();
        entry.Host = current.ToDictionary(p => p.Key, p => p.Value.device_type == DeviceType.CPU ? p.Value : MoveToHost(p.Value));
        _recent.Remove(name);
        Evictions++;

        static Tensor MoveToHost(Tensor t)
        {
            var host = t.to(CPU).DetachFromDisposeScope();
            t.Dispose();
            return host;
        }
    }

    /// <summary>Frees the host copies. Attached adapters stay in the model.</summary>
    public void Dispose()
    {
        foreach (var entry in _entries.Values)
            foreach (var t in entry.Host.Values) t.Dispose();
        _entries.Clear();
        _recent.Clear();
    }
}

using PeftSharp.IO;

namespace PeftSharp.Adapters;

/// <summary>One adapted module as an adapter directory describes it.</summary>
public sealed record InspectedModule(string Path, int? Rank, IReadOnlyList<SafeTensorInfo> Tensors)
{
    public long Parameters => Tensors.Sum(t => t.ElementCount);
}

/// <summary>What an adapter directory holds, read without a model: its config, its tensors grouped by module, and the
/// problems found (a directory with problems would fail to load).</summary>
public sealed record AdapterInspection(
    string Directory,
    AdapterConfig Config,
    string Method,
    IReadOnlyList<InspectedModule> Modules,
    IReadOnlyList<SafeTensorInfo> OtherTensors,
    IReadOnlyDictionary<string, string> Metadata,
    IReadOnlyList<string> Problems)
{
    public long Parameters => Modules.Sum(m => m.Parameters) + OtherTensors.Sum(t => t.ElementCount);

    public IReadOnlyList<int> Ranks => Modules.Select(m => m.Rank).OfType<int>().Distinct().Order().ToList();

    public bool IsValid => Problems.Count == 0;

    /// <summary>Reads and checks <paramref name="directory"/>; throws <see cref="AdapterFileException"/> only when a
    /// file cannot be read at all, and lists inconsistencies in <see cref="Problems"/>. Which keys belong to a module and
    /// what a module's rank is come from the method's config (<see cref="AdapterConfig.FileTensorMarkers"/>,
    /// <see cref="AdapterConfig.InspectModule"/>).</summary>
    public static AdapterInspection Read(string directory)
    {
        // A save that was interrupted: finish or undo it first (a read-only directory is read as it is).
        try { AdapterDirectoryCommit.Recover(directory, AdapterFiles.FileNames); }
        catch (UnauthorizedAccessException) { }
        var config = AdapterFiles.ReadConfig(directory);
        var (tensors, metadata) = SafeTensors.ReadHeader(Path.Combine(directory, AdapterFiles.WeightsFileName));
        var problems = new List<string>();
        var other = new List<SafeTensorInfo>();
        var byModule = new Dictionary<string, List<SafeTensorInfo>>();
        foreach (var t in tensors)
        {
            if (config.ModelLevelKeys.Contains(t.Name))
            {
                other.Add(t);
                continue;
            }
            if (!t.Name.StartsWith(AdapterFiles.KeyPrefix, StringComparison.Ordinal))
            {
                problems.Add($"tensor '{t.Name}' does not start with '{AdapterFiles.KeyPrefix}' as PEFT's keys do.");
                other.Add(t);
                continue;
            }
            var key = t.Name[AdapterFiles.KeyPrefix.Length..];
            var marker = config.FileTensorMarkers.Select(m => key.IndexOf(m, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
            if (marker < 0)
            {
                other.Add(t);   // the adapter's model-level tensors (a shared PHM rule, an invertible coupling), or modules_to_save
                continue;
            }
            var module = key[..marker];
            if (!byModule.TryGetValue(module, out var list)) byModule[module] = list = [];
            list.Add(t);
        }

        var modules = byModule.Select(p => new InspectedModule(p.Key, config.InspectModule(p.Key, p.Value, problems), p.Value)).ToList();
        string method = string.Equals(config.Variant.Replace("-", "_"), config.PeftType, StringComparison.OrdinalIgnoreCase) ? config.PeftType : $"{config.PeftType} ({config.Variant})";
        return new AdapterInspection(directory, config, method, modules, other, metadata, problems);
    }
}

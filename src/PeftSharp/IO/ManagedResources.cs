using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

namespace PeftSharp.IO;

/// <summary>
/// Reads the embedded (manifest) resources of a .NET assembly file without loading the assembly: its code never runs,
/// and its dependencies need not be present.
/// </summary>
internal static class ManagedResources
{
    /// <summary>The names of the resources embedded in <paramref name="assemblyPath"/>.</summary>
    public static IReadOnlyList<string> Names(string assemblyPath)
    {
        using var pe = Open(assemblyPath);
        var metadata = pe.GetMetadataReader();
        return metadata.ManifestResources.Select(h => metadata.GetString(metadata.GetManifestResource(h).Name)).ToList();
    }

    /// <summary>The bytes of resource <paramref name="name"/> embedded in <paramref name="assemblyPath"/>. Throws
    /// <see cref="InvalidDataException"/> listing the resources there when it has none of that name.</summary>
    public static byte[] Read(string assemblyPath, string name)
    {
        using var pe = Open(assemblyPath);
        var metadata = pe.GetMetadataReader();
        foreach (var handle in metadata.ManifestResources)
        {
            var resource = metadata.GetManifestResource(handle);
            if (metadata.GetString(resource.Name) != name) continue;
            if (!resource.Implementation.IsNil)
                throw new InvalidDataException($"Resource '{name}' of {assemblyPath} lives in another file, not in the assembly itself.");
            // The resources blob: for each resource, a 4-byte little-endian length and then the bytes.
            var directory = pe.PEHeaders.CorHeader!.ResourcesDirectory;
            var block = pe.GetSectionData(directory.RelativeVirtualAddress);
            var reader = block.GetReader();
            reader.Offset = checked((int)resource.Offset);
            int length = reader.ReadInt32();
            return reader.ReadBytes(length);
        }
        throw new InvalidDataException(
            $"{assemblyPath} has no embedded resource '{name}'. It has: {string.Join(", ", Names(assemblyPath))}.");
    }

    static PEReader Open(string assemblyPath)
    {
        var pe = new PEReader(File.OpenRead(assemblyPath));
        if (!pe.HasMetadata)
        {
            pe.Dispose();
            throw new InvalidDataException($"{assemblyPath} is not a .NET assembly (it has no metadata).");
        }
        return pe;
    }
}

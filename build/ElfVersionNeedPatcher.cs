// Marks one ELF version requirement (e.g. GLIBCXX_3.4.32) as WEAK so the dynamic loader accepts a system
// library that lacks it. Used by the MSBuild task in TorchSharpNativeFix.targets (build time) and by
// PeftSharp.Native.TorchSharpNative (run time, for the copies that notebooks load from the NuGet cache).
//
// Why: libLibTorchSharp.so 0.107.0 declares a need for GLIBCXX_3.4.32 while Debian 12's libstdc++ stops at
// 3.4.30. The only symbol behind that need is _ZSt21ios_base_library_initv, a marker nothing calls, so a weak
// need is safe. The patch sets VER_FLG_WEAK (0x2) on the Vernaux entry in .gnu.version_r; it is idempotent and
// changes nothing on systems whose libstdc++ provides the version.
using System;
using System.IO;
using System.Text;

namespace PeftSharp.Native
{
    public static class ElfVersionNeedPatcher
    {
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlagWeak = 0x2;

        public const string TorchSharpMissingVersion = "GLIBCXX_3.4.32";

        static readonly string[] LibStdCxxCandidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
        };

        /// <summary>True when this machine's libstdc++ is found and lacks <paramref name="version"/>.</summary>
        public static bool SystemLibStdCxxLacks(string version)
        {
            foreach (var candidate in LibStdCxxCandidates)
            {
                if (!File.Exists(candidate)) continue;
                var bytes = File.ReadAllBytes(candidate);
                return IndexOf(bytes, Encoding.ASCII.GetBytes(version + "\0")) < 0;
            }
            return false;
        }

        /// <summary>
        /// Sets the WEAK flag on the need for <paramref name="version"/> in the ELF file at <paramref name="path"/>.
        /// Returns "patched", "already weak" or "no such need"; throws InvalidDataException for a non-ELF64 file.
        /// The file is rewritten through a temporary copy and a move, so a failure never leaves it half written.
        /// </summary>
        public static string MarkVersionNeedWeak(string path, string version)
        {
            var elf = File.ReadAllBytes(path);
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException($"{path} is not an ELF file.");
            if (elf[4] != 2 || elf[5] != 1)
                throw new InvalidDataException($"{path} is not a little-endian 64-bit ELF file.");

            long sectionHeaders = (long)BitConverter.ToUInt64(elf, 0x28);
            int sectionHeaderSize = BitConverter.ToUInt16(elf, 0x3A);
            int sectionCount = BitConverter.ToUInt16(elf, 0x3C);

            for (int i = 0; i < sectionCount; i++)
            {
                long header = sectionHeaders + (long)i * sectionHeaderSize;
                if (BitConverter.ToUInt32(elf, (int)header + 4) != ShtGnuVerneed) continue;
                long verneedOffset = (long)BitConverter.ToUInt64(elf, (int)header + 0x18);
                int stringTableIndex = (int)BitConverter.ToUInt32(elf, (int)header + 0x28);
                int needCount = (int)BitConverter.ToUInt32(elf, (int)header + 0x2C);
                long stringTableHeader = sectionHeaders + (long)stringTableIndex * sectionHeaderSize;
                long stringTable = (long)BitConverter.ToUInt64(elf, (int)stringTableHeader + 0x18);

                long need = verneedOffset;
                for (int n = 0; n < needCount; n++)
                {
                    // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                    int auxCount = BitConverter.ToUInt16(elf, (int)need + 2);
                    long aux = need + BitConverter.ToUInt32(elf, (int)need + 8);
                    for (int a = 0; a < auxCount; a++)
                    {
                        // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                        var name = ReadCString(elf, stringTable + BitConverter.ToUInt32(elf, (int)aux + 8));
                        if (name == version)
                        {
                            ushort flags = BitConverter.ToUInt16(elf, (int)aux + 4);
                            if ((flags & VerFlagWeak) != 0) return "already weak";
                            BitConverter.GetBytes((ushort)(flags | VerFlagWeak)).CopyTo(elf, (int)aux + 4);
                            var temporary = path + ".patching";
                            File.WriteAllBytes(temporary, elf);
                            File.Replace(temporary, path, null);
                            return "patched";
                        }
                        aux += BitConverter.ToUInt32(elf, (int)aux + 12);
                    }
                    need += BitConverter.ToUInt32(elf, (int)need + 12);
                }
            }
            return "no such need";
        }

        static string ReadCString(byte[] bytes, long offset)
        {
            int end = (int)offset;
            while (end < bytes.Length && bytes[end] != 0) end++;
            return Encoding.ASCII.GetString(bytes, (int)offset, end - (int)offset);
        }

        // netstandard2.0 (the MSBuild inline-task compiler's target) has no span search.
        static int IndexOf(byte[] haystack, byte[] needle)
        {
            for (int i = 0; i + needle.Length <= haystack.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }
    }

#if !PEFTSHARP_LIBRARY
    // The MSBuild inline task (TorchSharpNativeFix.targets). RoslynCodeTaskFactory compiles one source file, so the
    // task lives here; the PeftSharp library compiles this file with PEFTSHARP_LIBRARY and leaves it out.
    public class PatchTorchSharpNative : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        public override bool Execute()
        {
            if (!ElfVersionNeedPatcher.SystemLibStdCxxLacks(ElfVersionNeedPatcher.TorchSharpMissingVersion)) return true;
            foreach (var item in Files)
            {
                var path = item.ItemSpec;
                if (!File.Exists(path)) continue;
                var outcome = ElfVersionNeedPatcher.MarkVersionNeedWeak(path, ElfVersionNeedPatcher.TorchSharpMissingVersion);
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, $"{path}: {outcome}");
            }
            return true;
        }
    }
#endif
}

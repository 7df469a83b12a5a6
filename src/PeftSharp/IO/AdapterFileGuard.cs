using System.Runtime.InteropServices;

namespace PeftSharp.IO;

/// <summary>
/// Checks a file before anything reads it: it must be a regular file (reading a FIFO blocks until a writer comes,
/// a device such as /dev/zero never ends) and no larger than its limit (a damaged or hostile file would otherwise be
/// read whole, for minutes, into an OutOfMemoryException).
/// </summary>
internal static class AdapterFileGuard
{
    /// <summary>The largest <c>adapter_config.json</c> read (PEFT's are a few kilobytes).</summary>
    public const long MaxConfigBytes = 1_000_000;

    /// <summary>Throws <see cref="AdapterFileException"/> when <paramref name="path"/> is not a regular file or has more
    /// than <paramref name="maxBytes"/> bytes. A missing file passes: whoever reads it reports what it should hold.</summary>
    public static void CheckRegularFile(string path, long maxBytes = long.MaxValue)
    {
        if (!File.Exists(path)) return;
        var (kind, length) = Stat(path);
        if (kind != "regular file")
            throw new AdapterFileException($"{path} is a {kind}, not a regular file; an adapter file must be a regular file (a FIFO or device could block or never end).");
        if (length > maxBytes)
            throw new AdapterFileException($"{path} has {length:N0} bytes, more than the {maxBytes:N0} allowed for this file: it is damaged or not an adapter file.");
    }

    // statx(2): its buffer layout is the same on every Linux architecture (stx_mode at 28, stx_size at 40, native byte order).
    [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
    static extern int StatX(int directoryFd, string path, int flags, uint mask, byte[] buffer);

    const int CurrentDirectory = -100;   // AT_FDCWD
    const uint TypeAndSize = 0x1 | 0x200;   // STATX_TYPE | STATX_SIZE

    static (string Kind, long Length) Stat(string path)
    {
        if (OperatingSystem.IsLinux())
        {
            var buffer = new byte[256];
            bool done;
            try
            {
                done = StatX(CurrentDirectory, path, 0, TypeAndSize, buffer) == 0;
            }
            catch (EntryPointNotFoundException)
            {
                done = false;   // a C library without statx: fall back to what .NET reports
            }
            if (done)
            {
                int type = BitConverter.ToUInt16(buffer, 28) & 0xF000;
                string kind = type switch
                {
                    0x8000 => "regular file", 0x1000 => "FIFO (named pipe)", 0x2000 => "character device",
                    0x6000 => "block device", 0xC000 => "socket", 0x4000 => "directory", _ => "special file",
                };
                return (kind, (long)BitConverter.ToUInt64(buffer, 40));
            }
        }
        return ("regular file", new FileInfo(path).Length);
    }
}

using PeftSharp.Lab;
using PeftSharp.Native;

// Before anything touches TorchSharp: make its native library loadable on this machine (no-op where not needed).
TorchSharpNative.EnsureLoadable();
return await Cli.RunAsync(args);

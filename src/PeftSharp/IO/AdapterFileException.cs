namespace PeftSharp.IO;

/// <summary>An adapter or tensor file that cannot be used: unreadable, malformed, or not fitting the model. The message
/// names the file, the key or field, and what was expected; nothing in the model was changed.</summary>
public class AdapterFileException(string message) : IOException(message);

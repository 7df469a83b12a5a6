namespace PeftSharp.Adapters;

/// <summary>Error messages as a user reads them.</summary>
public static class ErrorText
{
    /// <summary>An exception's message without the lines .NET appends for programmers ("(Parameter 'x')",
    /// "Actual value was y."): the library's messages already name the field and the value.</summary>
    public static string Plain(Exception e)
    {
        var message = e.Message;
        if (e is ArgumentOutOfRangeException { ActualValue: { } actual })
            message = message.Replace(Environment.NewLine + $"Actual value was {actual}.", "");
        if (e is ArgumentException { ParamName: { } parameter })
            message = message.Replace($" (Parameter '{parameter}')", "");
        return message.Trim();
    }
}

namespace PeftSharp.Training;

/// <summary>Runs an action once, when disposed: what an Attach or a temporary switch returns so that <c>using</c> or
/// <c>Dispose()</c> undoes it.</summary>
internal sealed class OnDispose(Action action) : IDisposable
{
    Action? _action = action;

    public void Dispose()
    {
        _action?.Invoke();
        _action = null;
    }
}

using System.Reflection;
using Module = TorchSharp.torch.nn.Module;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

/// <summary>
/// Finds and swaps child modules by dotted path. TorchSharp has no <c>get_submodule</c>/<c>set_submodule</c>, and a
/// parent's <c>forward</c> calls the module held in its field, so a swap must change both the field and the
/// registration (keeping the registration order, so <c>state_dict</c> keys keep theirs). Every precondition is
/// checked in <see cref="PlanReplace"/> before anything changes; the returned action does the swap.
/// </summary>
public static class ModuleSurgery
{
    static readonly FieldInfo SubmodulesField = typeof(Module).GetField("_internal_submodules", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly FieldInfo DeviceTypeField = typeof(Module).GetField("_deviceType", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly FieldInfo DeviceIndexField = typeof(Module).GetField("_deviceIndex", BindingFlags.Instance | BindingFlags.NonPublic)!;

    /// <summary>The module at <paramref name="path"/> ("" is the root).</summary>
    public static Module Get(Module root, string path)
    {
        if (path.Length == 0) return root;
        foreach (var (name, module) in root.named_modules())
            if (name == path) return module;
        throw new ArgumentException($"{root.GetName()} has no module at '{path}'.", nameof(path));
    }

    /// <summary>
    /// Checks that the module at <paramref name="path"/> can be replaced by a module of type
    /// <paramref name="replacementType"/> and returns the action that replaces it. Throws, changing nothing, when
    /// the parent holds the child in a way that cannot take the replacement (e.g. a field typed <c>Linear</c>).
    /// </summary>
    public static Action<Module> PlanReplace(Module root, string path, Type replacementType)
    {
        var lastDot = path.LastIndexOf('.');
        var parentPath = lastDot < 0 ? "" : path[..lastDot];
        var childName = path[(lastDot + 1)..];
        var parent = Get(root, parentPath);
        var child = Get(root, path);

        if (parent is TorchSharp.Modules.Sequential)
        {
            var modules = (System.Collections.IList)typeof(TorchSharp.Modules.Sequential)
                .GetField("_modules", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(parent)!;
            int index = IndexOfReference(modules, child);
            if (index < 0) throw CannotSwap(path, parent, "the Sequential does not list it");
            return replacement =>
            {
                modules[index] = replacement;
                SetRegistration(parent, childName, replacement);
            };
        }

        var listType = FindGeneric(parent.GetType(), typeof(TorchSharp.Modules.ModuleList<>));
        if (listType is not null)
        {
            var elementType = listType.GetGenericArguments()[0];
            if (!elementType.IsAssignableFrom(replacementType))
                throw CannotSwap(path, parent, $"it is a ModuleList<{elementType.Name}>; declare it ModuleList<Module<Tensor, Tensor>> so an adapter can take the place of an element");
            var list = (System.Collections.IList)parent;
            int index = IndexOfReference(list, child);
            if (index < 0) throw CannotSwap(path, parent, "the ModuleList does not hold it");
            return replacement =>
            {
                list[index] = replacement;
                SetRegistration(parent, childName, replacement);
            };
        }

        var fields = AllInstanceFields(parent.GetType()).Where(f => ReferenceEquals(f.GetValue(parent), child)).ToList();
        if (fields.Count == 0)
            throw CannotSwap(path, parent, "no field of the parent holds it, so its forward() would not see a replacement");
        var wrongType = fields.FirstOrDefault(f => !f.FieldType.IsAssignableFrom(replacementType));
        if (wrongType is not null)
            throw CannotSwap(path, parent,
                $"its field '{FieldDisplayName(wrongType)}' is typed {wrongType.FieldType.Name}, which cannot hold an adapter; " +
                $"declare it Module<Tensor, Tensor> (e.g. `Module<Tensor, Tensor> {FieldDisplayName(wrongType)} = nn.Linear(...)`)");
        return replacement =>
        {
            foreach (var field in fields) field.SetValue(parent, replacement);
            SetRegistration(parent, childName, replacement);
        };
    }

    /// <summary>Gives <paramref name="wrapper"/> the device record of <paramref name="wrapped"/>, so a later
    /// <c>.to(device)</c> on the model does not skip the wrapper's subtree.</summary>
    public static void CopyDeviceRecord(Module wrapped, Module wrapper)
    {
        DeviceTypeField.SetValue(wrapper, DeviceTypeField.GetValue(wrapped));
        DeviceIndexField.SetValue(wrapper, DeviceIndexField.GetValue(wrapped));
    }

    static void SetRegistration(Module parent, string childName, Module replacement)
    {
        var registry = (TorchSharp.Utils.OrderedDict<string, Module>)SubmodulesField.GetValue(parent)!;
        if (registry.ContainsKey(childName)) registry[childName] = replacement;
        else registry.Add(childName, replacement);
    }

    static ArgumentException CannotSwap(string path, Module parent, string why) =>
        new($"Cannot put an adapter at '{path}' in {parent.GetType().Name}: {why}.");

    static int IndexOfReference(System.Collections.IList list, object item)
    {
        for (int i = 0; i < list.Count; i++)
            if (ReferenceEquals(list[i], item)) return i;
        return -1;
    }

    static Type? FindGeneric(Type? type, Type generic)
    {
        for (; type is not null; type = type.BaseType)
            if (type.IsGenericType && type.GetGenericTypeDefinition() == generic) return type;
        return null;
    }

    static IEnumerable<FieldInfo> AllInstanceFields(Type type)
    {
        for (Type? t = type; t is not null && t != typeof(Module); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (!f.FieldType.IsValueType) yield return f;
    }

    static string FieldDisplayName(FieldInfo field) =>
        field.Name.StartsWith('<') ? field.Name[1..field.Name.IndexOf('>')] : field.Name;
}

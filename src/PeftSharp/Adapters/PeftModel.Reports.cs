using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Adapters;

// PeftModel: what the model holds, for summaries.
public sealed partial class PeftModel
{
    /// <summary>Trainable and total parameter counts and bytes, and one row per adapter per layer.</summary>
    public ParameterReport ParameterReport()
    {
        long trainable = 0, all = 0, trainableBytes = 0, allBytes = 0;
        foreach (var (_, p) in Model.named_parameters())
        {
            long bytes = p.numel() * p.ElementSize;
            all += p.numel();
            allBytes += bytes;
            if (p.requires_grad)
            {
                trainable += p.numel();
                trainableBytes += bytes;
            }
        }
        var rows = new List<AdapterLayerInfo>();
        foreach (var layer in Layers)
        {
            var weight = layer.BaseLayer.get_parameter("weight");
            foreach (var name in layer.AdapterNames)
            {
                var adapter = layer[name];
                long limit = weight is { } w && w.dim() == 2 ? Math.Min(w.shape[0], w.shape[1]) : long.MaxValue;
                var note = adapter.Rank > limit ? $"rank {adapter.Rank} is above min(out, in) = {limit}: more parameters, no more expressiveness" : null;
                rows.Add(new AdapterLayerInfo(layer.Path, layer.BaseLayer.GetType().Name, weight?.shape ?? [], name, adapter.MethodName,
                    adapter.Rank, adapter.parameters().Sum(p => p.numel()), layer.ActiveAdapters.Contains(name), layer.MergedAdapters.Contains(name), note));
            }
        }
        foreach (var wrapper in SavedModules)
            foreach (var name in wrapper.AdapterNames)
                rows.Add(new AdapterLayerInfo(wrapper.Path, wrapper.OriginalModule.GetType().Name, wrapper.OriginalModule.get_parameter("weight")?.shape ?? [],
                    name, "modules_to_save", null, wrapper[name].parameters().Sum(p => p.numel()), wrapper.ActiveAdapter == name, false));
        foreach (var (name, modelAdapter) in ModelAdapters)
            rows.Add(new AdapterLayerInfo($"{ModelAdapterDict.RegisteredName}.{name}", "(model)", [], name, modelAdapter.MethodName, null,
                modelAdapter.parameters().Sum(p => p.numel()), _active.Contains(name), false));
        return new ParameterReport(trainable, all, trainableBytes, allBytes, rows, _active.ToList(), AdaptersDisabled);
    }
}

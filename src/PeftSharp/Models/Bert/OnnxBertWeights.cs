using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models.Bert;

/// <summary>
/// Takes the weights of a BERT exported to ONNX by Hugging Face / PyTorch and names them as PyTorch's state_dict does.
/// Most initializers keep their PyTorch names; the exporter stores each Linear's weight as the right operand of a
/// <c>MatMul</c> under a generated name (<c>931</c>, <c>onnx::MatMul_788</c>) and in (in, out) layout. Such a weight takes
/// its name from the bias that the next <c>Add</c> adds to the MatMul's output (<c>X.bias</c> gives <c>X.weight</c>) and
/// is transposed to PyTorch's (out, in).
/// </summary>
internal static class OnnxBertWeights
{
    static readonly string[] Roots = ["embeddings.", "encoder.", "pooler."];

    /// <summary>The model's float weights by PyTorch name (new CPU tensors; the caller disposes them).</summary>
    public static Dictionary<string, Tensor> StateDict(OnnxModel onnx)
    {
        var names = new Dictionary<string, (OnnxInitializer Source, bool Transpose)>();
        foreach (var (name, initializer) in onnx.Initializers)
            if (initializer.DataType == OnnxInitializer.Float && Roots.Any(r => name.StartsWith(r, StringComparison.Ordinal)))
                names[name] = (initializer, false);

        var consumers = onnx.Nodes.SelectMany(n => n.Inputs.Select(i => (Input: i, Node: n))).ToLookup(x => x.Input, x => x.Node);
        foreach (var matmul in onnx.Nodes.Where(n => n.OpType == "MatMul" && n.Inputs.Count == 2))
        {
            if (!onnx.Initializers.TryGetValue(matmul.Inputs[1], out var weight) || names.Values.Any(v => ReferenceEquals(v.Source, weight))) continue;
            var bias = consumers[matmul.Outputs[0]].Where(n => n.OpType == "Add")
                .SelectMany(n => n.Inputs).FirstOrDefault(i => i.EndsWith(".bias", StringComparison.Ordinal) && onnx.Initializers.ContainsKey(i));
            if (bias is null)
                throw new InvalidDataException($"The ONNX MatMul '{matmul.Name}' multiplies by initializer '{weight.Name}', but no bias is added to its output, so its PyTorch name is unknown.");
            names[bias[..^".bias".Length] + ".weight"] = (weight, true);
        }

        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var (name, (source, transpose)) in names.OrderBy(n => n.Key, StringComparer.Ordinal))
            {
                var t = source.ToTensor();
                if (transpose)
                {
                    var transposed = t.t().contiguous();   // (in, out) → (out, in)
                    t.Dispose();
                    t = transposed;
                }
                result[name] = t;
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>The sizes a state dict implies. Heads and the LayerNorm epsilon are not in the weights: pass them.</summary>
    public static BertConfig InferConfig(IReadOnlyDictionary<string, Tensor> stateDict, int numAttentionHeads, double layerNormEps)
    {
        Tensor Get(string key) => stateDict.TryGetValue(key, out var t) ? t
            : throw new InvalidDataException($"The weights have no '{key}'; a BERT encoder needs it. Keys seen: {string.Join(", ", stateDict.Keys.Take(8))}, ...");
        var words = Get("embeddings.word_embeddings.weight");   // (vocab, C)
        int layers = stateDict.Keys.Where(k => k.StartsWith("encoder.layer.", StringComparison.Ordinal))
            .Select(k => int.Parse(k.Split('.')[2])).DefaultIfEmpty(-1).Max() + 1;
        return new BertConfig
        {
            VocabSize = (int)words.shape[0],
            HiddenSize = (int)words.shape[1],
            MaxPositionEmbeddings = (int)Get("embeddings.position_embeddings.weight").shape[0],
            TypeVocabSize = (int)Get("embeddings.token_type_embeddings.weight").shape[0],
            NumHiddenLayers = layers,
            IntermediateSize = (int)Get("encoder.layer.0.intermediate.dense.weight").shape[0],
            NumAttentionHeads = numAttentionHeads,
            LayerNormEps = layerNormEps,
            AddPoolingLayer = stateDict.ContainsKey("pooler.dense.weight"),
        };
    }

    /// <summary>Copies <paramref name="stateDict"/> into <paramref name="model"/>, after checking that the keys and shapes
    /// are exactly the model's (the message names the first difference).</summary>
    public static void Load(nn.Module model, IReadOnlyDictionary<string, Tensor> stateDict)
    {
        var own = model.state_dict();
        var missing = own.Keys.Except(stateDict.Keys).ToList();
        var extra = stateDict.Keys.Except(own.Keys).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new InvalidDataException(
                $"The weights do not fit {model.GetName()}: missing {(missing.Count == 0 ? "none" : string.Join(", ", missing.Take(5)))}; " +
                $"unexpected {(extra.Count == 0 ? "none" : string.Join(", ", extra.Take(5)))}.");
        foreach (var (key, target) in own)
            if (!target.shape.SequenceEqual(stateDict[key].shape))
                throw new InvalidDataException($"Weight '{key}' has shape [{string.Join(", ", stateDict[key].shape)}]; the model expects [{string.Join(", ", target.shape)}].");
        using var _ = no_grad();
        foreach (var (key, target) in own) target.copy_(stateDict[key]);
    }
}

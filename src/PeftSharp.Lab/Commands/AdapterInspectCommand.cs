using System.Text.Json;
using PeftSharp.Adapters;
using PeftSharp.Methods.LowRank;

namespace PeftSharp.Lab.Commands;

/// <summary><c>adapter inspect DIR</c>: what an adapter directory holds, and whether it is consistent.</summary>
static class AdapterInspectCommand
{
    public static int Run(Arguments arguments)
    {
        var directory = arguments.Next("inspect") ?? throw new ArgumentException("adapter inspect needs a directory: adapter inspect DIR [--json].");
        var inspection = AdapterInspection.Read(directory);
        var lora = inspection.Config as LoraConfig;
        if (arguments.Flag("json"))
        {
            var json = new
            {
                directory = inspection.Directory,
                peft_type = inspection.Config.PeftType,
                method = inspection.Method,
                r = lora?.R,
                lora_alpha = lora?.LoraAlpha,
                ranks = inspection.Ranks,
                target_modules = inspection.Config.TargetModules?.ToString(),
                modules_to_save = inspection.Config.ModulesToSave,
                parameters = inspection.Parameters,
                modules = inspection.Modules.Select(m => new
                {
                    path = m.Path, rank = m.Rank, parameters = m.Parameters,
                    tensors = m.Tensors.Select(t => new { name = t.Name, dtype = t.DType, shape = t.Shape }),
                }),
                other_tensors = inspection.OtherTensors.Select(t => new { name = t.Name, dtype = t.DType, shape = t.Shape }),
                valid = inspection.IsValid,
                problems = inspection.Problems,
            };
            Console.WriteLine(JsonSerializer.Serialize(json, new JsonSerializerOptions { WriteIndented = true }));
            return inspection.IsValid ? 0 : 1;
        }

        Console.WriteLine($"adapter      {inspection.Directory}");
        Console.WriteLine($"method       {inspection.Method}");
        if (lora is not null)
        {
            Console.WriteLine($"rank         r={lora.R}{(lora.RankPattern is { Count: > 0 } ? $" (rank_pattern: {string.Join(", ", lora.RankPattern.Select(p => $"{p.Key}={p.Value}"))})" : "")}; in the file: {string.Join(", ", inspection.Ranks)}");
            Console.WriteLine($"alpha        {lora.LoraAlpha}{(lora.UseRslora ? " (rsLoRA: s = alpha/sqrt(r))" : " (s = alpha/r)")}");
            Console.WriteLine($"init         {lora.InitLoraWeights}{(lora.InitLoraWeights.ChangesBaseWeights ? "  (A, B relative to a residual base: load onto that residual)" : "")}");
        }
        Console.WriteLine($"targets      {inspection.Config.TargetModules}");
        if (inspection.Config.ModulesToSave is { Count: > 0 } saved) Console.WriteLine($"saved        {string.Join(", ", saved)} (modules_to_save)");
        Console.WriteLine($"parameters   {inspection.Parameters:N0} in {inspection.Modules.Count} modules");
        Console.WriteLine();
        foreach (var module in inspection.Modules)
        {
            Console.WriteLine($"  {module.Path}  rank {module.Rank?.ToString() ?? "-"}  {module.Parameters:N0} params");
            foreach (var t in module.Tensors)
                Console.WriteLine($"      {t.Name[(AdapterFiles.KeyPrefix.Length + module.Path.Length + 1)..],-24} {t.DType,-4} [{string.Join(", ", t.Shape)}]");
        }
        foreach (var t in inspection.OtherTensors) Console.WriteLine($"  {t.Name}  {t.DType} [{string.Join(", ", t.Shape)}]");
        Console.WriteLine();
        if (inspection.IsValid) Console.WriteLine("valid: yes");
        else
        {
            Console.WriteLine("valid: no");
            foreach (var p in inspection.Problems) Console.WriteLine($"  - {p}");
        }
        return inspection.IsValid ? 0 : 1;
    }
}

using System.Text.Json;
using PeftSharp.Methods;

namespace PeftSharp.Lab.Commands;

/// <summary><c>methods</c>: the method list, as a table or JSON.</summary>
static class MethodsCommand
{
    public static int Run(Arguments arguments)
    {
        if (arguments.Flag("json"))
        {
            var rows = MethodList.All.Select(m => new
            {
                name = m.Name, family = m.Family, formula = m.Formula, papers = m.Papers, can_merge = m.CanMerge,
                parameters = m.Parameters.Select(p => new { name = p.Name, type = p.Type, @default = p.Default, description = p.Description }),
            });
            Console.WriteLine(JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"{"method",-8} {"family",-9} {"merge",-5}  {"what it computes",-62} papers");
        foreach (var m in MethodList.All)
            Console.WriteLine($"{m.Name,-8} {m.Family,-9} {(m.CanMerge ? "yes" : "no"),-5}  {m.Formula,-62} {m.Papers}");
        Console.WriteLine();
        Console.WriteLine($"options (all LoRA-family methods): {string.Join(", ", MethodList.All[0].Parameters.Select(p => $"{p.Name}={p.Default}"))}");
        return 0;
    }
}

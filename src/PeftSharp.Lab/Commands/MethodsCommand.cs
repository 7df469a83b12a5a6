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
                parameters = m.Parameters.Select(p => new { name = p.Name, json_name = p.JsonName, type = p.Type, @default = p.Default, choices = p.Choices, description = p.Description }),
            });
            Console.WriteLine(JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        int width = MethodList.All.Max(m => m.Name.Length);
        Console.WriteLine($"{"method".PadRight(width)} {"family",-10} {"merge",-5}  {"what it computes",-62} papers");
        foreach (var m in MethodList.All)
            Console.WriteLine($"{m.Name.PadRight(width)} {m.Family,-10} {(m.CanMerge ? "yes" : "no"),-5}  {m.Formula,-62} {m.Papers}");
        Console.WriteLine();
        // Each method's own options with its own defaults (methods that share both are listed together).
        foreach (var group in MethodList.All.Where(m => m.Parameters.Count > 0).GroupBy(m => string.Join(" ", m.Parameters.Select(p => $"--{p.Name}={p.Default}"))))
            Console.WriteLine($"options of {string.Join(", ", group.Select(m => m.Name))}: {group.Key}");
        return 0;
    }
}

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
        int width = MethodList.All.Max(m => m.Name.Length);
        Console.WriteLine($"{"method".PadRight(width)} {"family",-10} {"merge",-5}  {"what it computes",-62} papers");
        foreach (var m in MethodList.All)
            Console.WriteLine($"{m.Name.PadRight(width)} {m.Family,-10} {(m.CanMerge ? "yes" : "no"),-5}  {m.Formula,-62} {m.Papers}");
        Console.WriteLine();
        foreach (var group in MethodList.All.Where(m => m.Parameters.Count > 0).GroupBy(m => string.Join(",", m.Parameters.Select(p => p.Name))))
            Console.WriteLine($"options of {string.Join(", ", group.Select(m => m.Name))}: {string.Join(", ", group.First().Parameters.Select(p => $"{p.Name}={p.Default}"))}");
        return 0;
    }
}

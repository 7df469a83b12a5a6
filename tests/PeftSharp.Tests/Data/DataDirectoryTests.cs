using PeftSharp.Data;

namespace PeftSharp.Tests.Data;

public sealed class DataDirectoryTests
{
    [Fact]
    public void A_missing_data_folder_gives_an_error_that_says_where_it_looked_and_how_to_fix_it()
    {
        string empty = TempDirectory.Create();
        var e = Assert.Throws<DirectoryNotFoundException>(() => DataDirectory.Find("sentiment", null, null, [empty]));
        Assert.Contains("data/sentiment/meta.json", e.Message);
        Assert.Contains(Path.Combine(empty, "data"), e.Message);
        Assert.Contains(DataDirectory.EnvironmentVariable, e.Message);
        Assert.Contains("data build sentiment", e.Message);
    }

    [Fact]
    public void A_data_folder_given_explicitly_without_the_dataset_is_an_error_naming_that_folder()
    {
        string empty = TempDirectory.Create();
        var fromEnvironment = Assert.Throws<DirectoryNotFoundException>(() => DataDirectory.Find("mnist", null, empty, []));
        Assert.Contains(empty, fromEnvironment.Message);
        Assert.Contains(DataDirectory.EnvironmentVariable, fromEnvironment.Message);
        var fromOverride = Assert.Throws<DirectoryNotFoundException>(() => DataDirectory.Find("mnist", empty, null, []));
        Assert.Contains("DataDirectory.Override", fromOverride.Message);
    }

    [Fact]
    public void The_data_folder_is_found_by_walking_up_from_a_nested_directory()
    {
        string root = TempDirectory.Create();
        Directory.CreateDirectory(Path.Combine(root, "data", "toy"));
        File.WriteAllText(Path.Combine(root, "data", "toy", DatasetMeta.FileName), "{}");
        string nested = Directory.CreateDirectory(Path.Combine(root, "a", "b", "c")).FullName;
        Assert.Equal(Path.Combine(root, "data", "toy"), DataDirectory.Find("toy", null, null, [nested]));
    }

    [Fact]
    public void The_readers_report_a_missing_data_folder_instead_of_failing_later()
    {
        string empty = TempDirectory.Create();
        DataDirectory.Override = empty;
        try
        {
            var e = Assert.Throws<DirectoryNotFoundException>(() => Datasets.Sentiment(Split.Train));
            Assert.Contains("has no dataset 'sentiment'", e.Message);
            Assert.Throws<DirectoryNotFoundException>(() => Datasets.Mnist(Split.Test));
        }
        finally
        {
            DataDirectory.Override = null;
        }
    }

    [Fact]
    public void A_split_file_with_missing_rows_is_reported_with_the_rebuild_command()
    {
        string root = TempDirectory.Create();
        string source = DataDirectory.Find("sentiment");
        string copy = Directory.CreateDirectory(Path.Combine(root, "sentiment")).FullName;
        foreach (var file in Directory.EnumerateFiles(source)) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        var rows = DataFiles.ReadJsonLines(Path.Combine(copy, "test.jsonl.gz")).Take(10).ToList();
        DataFiles.WriteJsonLines(Path.Combine(copy, "test.jsonl.gz"), rows);
        DataDirectory.Override = root;
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => Datasets.Sentiment(Split.Test));
            Assert.Contains("has 10 rows but meta.json says 450", e.Message);
            Assert.Contains("data build sentiment", e.Message);
        }
        finally
        {
            DataDirectory.Override = null;
        }
    }

    [Fact]
    public void An_unknown_dataset_name_lists_the_datasets()
    {
        var e = Assert.Throws<ArgumentException>(() => Datasets.Meta("imagenet"));
        Assert.Contains("sentiment, brown, mnist, fashion-mnist, multitask", e.Message);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Adapters;

/// <summary>What <see cref="SelfRefinedRetrieval.Predict"/> decided for each row: the class (N), the task whose adapter
/// the first look picked (N), the task whose adapter made the final prediction (N), and how many looks it took (N).
/// Int64 tensors; dispose them when done.</summary>
public sealed record RetrievalResult(Tensor Predictions, Tensor FirstTasks, Tensor Tasks, Tensor Iterations) : IDisposable
{
    public void Dispose()
    {
        Predictions.Dispose();
        FirstTasks.Dispose();
        Tasks.Dispose();
        Iterations.Dispose();
    }
}

/// <summary>
/// MOS's training-free, self-refined adapter retrieval (Sun et al. 2025, §4.3) for class-incremental learning with one
/// adapter per task. Every class c has a prototype p_c (the mean feature of its training rows, computed with its own
/// task's adapter) and belongs to task τ(c). A test row has no task id, so:
/// <list type="number">
/// <item>a first look picks a task: the class nearest to the row's feature under the frozen model, and its task;</item>
/// <item>the row's feature under that task's adapter is classified against all prototypes (cosine similarity); the
/// predicted class names a task τ';</item>
/// <item>if τ' is the adapter just used, stop; otherwise look again with τ''s adapter, at most
/// <c>maxIterations</c> looks in all (the last look's prediction stands).</item>
/// </list>
/// The model's own prediction refines which adapter to use: a wrong first pick is corrected when the picked adapter's
/// features point to another task's class.
/// </summary>
public static class SelfRefinedRetrieval
{
    /// <summary>The mean feature of each class: <paramref name="features"/> (N, D) of rows labelled
    /// <paramref name="labels"/> (N, int64) → (<paramref name="classes"/>, D). Every class needs at least one row.</summary>
    public static Tensor Prototypes(Tensor features, Tensor labels, int classes)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentNullException.ThrowIfNull(labels);
        if (features.dim() != 2 || labels.dim() != 1 || labels.shape[0] != features.shape[0])
            throw new ArgumentException($"Prototypes need features (N, D) and labels (N); got [{string.Join(", ", features.shape)}] and [{string.Join(", ", labels.shape)}].", nameof(labels));
        long[] labelValues;
        using (NewDisposeScope()) labelValues = labels.to(ScalarType.Int64).cpu().data<long>().ToArray();
        if (labelValues.Any(l => l < 0 || l >= classes))
            throw new ArgumentException($"Label {labelValues.First(l => l < 0 || l >= classes)} is outside the {classes} classes.", nameof(labels));
        var empty = Enumerable.Range(0, classes).Where(c => !labelValues.Contains(c)).ToList();
        if (empty.Count > 0)
            throw new ArgumentException($"Class(es) {string.Join(", ", empty)} have no rows among the {labels.shape[0]} given; every class needs rows for its prototype.", nameof(labels));
        using var scope = NewDisposeScope();
        var onehot = zeros(features.shape[0], classes, dtype: features.dtype, device: features.device)
            .scatter_(1, labels.to(ScalarType.Int64).view(-1, 1).to(features.device), ones(features.shape[0], 1, dtype: features.dtype, device: features.device));                // (N, C)
        var counts = onehot.sum(0L);   // 0L: a literal 0 would bind to the ScalarType overload                                                                      // (C)
        return onehot.t().matmul(features).div(counts.unsqueeze(1)).MoveToOuterDisposeScope();         // (C, D)
    }

    /// <summary>Cosine similarity of every row of <paramref name="features"/> (N, D) to every prototype (C, D): (N, C).</summary>
    public static Tensor CosineLogits(Tensor features, Tensor prototypes)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentNullException.ThrowIfNull(prototypes);
        if (features.shape[^1] != prototypes.shape[^1])
            throw new ArgumentException($"The features have {features.shape[^1]} dimensions, the prototypes {prototypes.shape[^1]}; compute both with the same model.", nameof(prototypes));
        using var scope = NewDisposeScope();
        return nn.functional.normalize(features, dim: -1).matmul(nn.functional.normalize(prototypes, dim: -1).t()).MoveToOuterDisposeScope();
    }

    /// <summary>The task of each class in <paramref name="classes"/> (int64, any shape) by <paramref name="classTask"/>.</summary>
    public static Tensor TasksOf(Tensor classes, IReadOnlyList<int> classTask)
    {
        using var scope = NewDisposeScope();
        var table = tensor(classTask.Select(t => (long)t).ToArray(), device: classes.device);
        return table.index_select(0, classes.flatten()).view(classes.shape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Retrieves each row's adapter and classifies it. <paramref name="firstTasks"/> (N, int64): the first look's task
    /// per row (e.g. <see cref="TasksOf"/> the nearest frozen prototype); <paramref name="taskFeatures"/> (N, T, D): each
    /// row's feature under each of the T task adapters; <paramref name="prototypes"/> (C, D); <paramref name="classTask"/>:
    /// the task of each of the C classes (in [0, T)).
    /// </summary>
    public static RetrievalResult Predict(Tensor firstTasks, Tensor taskFeatures, Tensor prototypes, IReadOnlyList<int> classTask, int maxIterations = 4)
    {
        ArgumentNullException.ThrowIfNull(firstTasks);
        ArgumentNullException.ThrowIfNull(taskFeatures);
        ArgumentNullException.ThrowIfNull(prototypes);
        ArgumentNullException.ThrowIfNull(classTask);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxIterations, 1);
        if (taskFeatures.dim() != 3 || firstTasks.dim() != 1 || firstTasks.shape[0] != taskFeatures.shape[0])
            throw new ArgumentException($"Expected first tasks (N) and task features (N, T, D); got [{string.Join(", ", firstTasks.shape)}] and [{string.Join(", ", taskFeatures.shape)}].", nameof(taskFeatures));
        long n = taskFeatures.shape[0], tasks = taskFeatures.shape[1], dim = taskFeatures.shape[2];
        if (classTask.Count != prototypes.shape[0])
            throw new ArgumentException($"{prototypes.shape[0]} prototypes but {classTask.Count} class → task entries; give one task per class.", nameof(classTask));
        if (classTask.Where(t => t < 0 || t >= tasks).Select(t => (int?)t).FirstOrDefault() is int bad)
            throw new ArgumentException($"Class task {bad} is outside the {tasks} tasks whose features were given.", nameof(classTask));
        using var scope = NewDisposeScope();
        if (firstTasks.lt(0).logical_or(firstTasks.ge(tasks)).any().item<bool>())
            throw new ArgumentException($"A first task is outside [0, {tasks}).", nameof(firstTasks));
        var current = firstTasks.to(ScalarType.Int64).clone();                                           // (N) the adapter looked with
        var predictions = zeros(n, dtype: ScalarType.Int64, device: taskFeatures.device);
        var iterations = zeros(n, dtype: ScalarType.Int64, device: taskFeatures.device);
        var active = ones(n, dtype: ScalarType.Bool, device: taskFeatures.device);
        for (int look = 1; look <= maxIterations; look++)
        {
            var features = taskFeatures.gather(1, current.view(n, 1, 1).expand(n, 1, dim)).squeeze(1);    // (N, D)
            var predicted = CosineLogits(features, prototypes).argmax(1);                                // (N)
            var named = TasksOf(predicted, classTask);                                                  // (N)
            predictions = where(active, predicted, predictions);
            iterations = where(active, full_like(iterations, look), iterations);
            var moving = active.logical_and(named.ne(current));
            if (look < maxIterations) current = where(moving, named, current);
            active = moving;
            if (!active.any().item<bool>()) break;
        }
        return new RetrievalResult(predictions.MoveToOuterDisposeScope(), firstTasks.to(ScalarType.Int64).clone().MoveToOuterDisposeScope(),
            current.MoveToOuterDisposeScope(), iterations.MoveToOuterDisposeScope());
    }
}

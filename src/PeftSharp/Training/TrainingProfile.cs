using System.Diagnostics;
using System.Globalization;
using System.Text;
using PeftSharp.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Training;

/// <summary>One module's share of a profiled training step: the wall time spent inside it in the forward and in the
/// backward pass (its own time: a module's children are not profiled separately, except that an adapter layer counts
/// as one module, base layer and adapters together), the size of its output, and its parameters.</summary>
public sealed record ModuleProfile(string Path, string Kind, double ForwardSeconds, double BackwardSeconds, long OutputBytes,
                                   long Parameters, long TrainableParameters)
{
    public double TotalSeconds => ForwardSeconds + BackwardSeconds;
}

/// <summary>
/// Where a training step's time and memory go: per module (forward and backward), per phase (zero_grad, forward,
/// backward, optimizer, and the time spent between modules: attention scores, residual sums, the loss), and the memory
/// that lives between steps (parameters, their gradients, the optimizer's state) next to what a step adds while it runs
/// (its peak resident memory above the start), page faults and managed allocations. <see cref="Measure"/> makes one.
/// </summary>
/// <remarks>
/// How the backward is timed: a forward hook passes each module's output through an identity autograd node, and a
/// pre-hook does the same to its input. Autograd reaches the output's node when the module's backward begins and the
/// input's node when it ends; every interval between two such events belongs to the module whose backward began it,
/// or to "between modules" when a module's backward ended it. The nodes copy each activation once, so a profiled step
/// is slower than a plain one: <see cref="UnprofiledStepSeconds"/> gives the plain step and <see cref="Overhead"/> the
/// ratio, and the memory figures come from plain steps. A module whose input needs no gradient (the first layer) has
/// no end marker: what autograd does after its backward (accumulating into leaf gradients) counts as its own.
/// </remarks>
public sealed record TrainingProfile
{
    public required string Title { get; init; }

    /// <summary>Profiled steps averaged (after one warm-up step that creates the optimizer's state).</summary>
    public required int Steps { get; init; }

    /// <summary>Modules in the order the forward pass first called them.</summary>
    public required IReadOnlyList<ModuleProfile> Modules { get; init; }

    /// <summary>Mean wall time of a step with the profiling hooks.</summary>
    public required double StepSeconds { get; init; }

    /// <summary>Mean wall time of the same step without hooks: what the step costs when not watched.</summary>
    public required double UnprofiledStepSeconds { get; init; }

    public required double ZeroGradSeconds { get; init; }

    /// <summary>The forward pass, loss included.</summary>
    public required double ForwardSeconds { get; init; }

    public required double BackwardSeconds { get; init; }

    public required double OptimizerSeconds { get; init; }

    /// <summary>Forward time spent outside every profiled module (attention arithmetic, residual sums, the loss).</summary>
    public required double ForwardBetweenModulesSeconds { get; init; }

    /// <summary>Backward time spent outside every profiled module.</summary>
    public required double BackwardBetweenModulesSeconds { get; init; }

    /// <summary>Bytes of every parameter of the model.</summary>
    public required long ParameterBytes { get; init; }

    /// <summary>Bytes of the trained parameters' gradients (one per trained parameter).</summary>
    public required long GradientBytes { get; init; }

    /// <summary>Bytes of the optimizer's state for the trained parameters (AdamW: two moments each).</summary>
    public required long OptimizerStateBytes { get; init; }

    /// <summary>Sum of the profiled modules' output sizes in one step: the activations the forward produces (most of
    /// them kept for the backward).</summary>
    public required long ModuleOutputBytes { get; init; }

    /// <summary>The largest resident memory a plain step reached above the resident memory at its start (Linux; 0
    /// elsewhere): activations, gradients being formed, temporaries, as far as they did not reuse blocks an earlier step
    /// freed (the profile trains with <see cref="ProcessMemory.KeepFreedMemory"/>, as the Trainer does, unless the process
    /// chose <see cref="ProcessMemory.ReturnFreedMemory"/>, which shows a step's whole footprint).</summary>
    public required long PeakOverStartBytes { get; init; }

    /// <summary>Minor page faults per plain step (Linux): memory the allocator took from the system and touched for the
    /// first time, a cost paid on every step when freed blocks go back to the system.</summary>
    public required double MinorPageFaultsPerStep { get; init; }

    /// <summary>Managed (.NET) bytes allocated per plain step: wrappers, closures, lists; the tensors' data is native.</summary>
    public required long ManagedBytesPerStep { get; init; }

    /// <summary>Garbage collections per plain step.</summary>
    public required double CollectionsPerStep { get; init; }

    public required long TrainableParameters { get; init; }

    public required long AllParameters { get; init; }

    /// <summary>How much slower a profiled step was than a plain one.</summary>
    public double Overhead => UnprofiledStepSeconds > 0 ? StepSeconds / UnprofiledStepSeconds : double.NaN;

    /// <summary>Time inside the modules, forward and backward.</summary>
    public double ModuleSeconds => Modules.Sum(m => m.TotalSeconds);

    /// <summary>The step's time by phase, in the order a step runs them; the forward and backward are split into the
    /// modules' time and the time between modules.</summary>
    public IReadOnlyList<(string Phase, double Seconds)> Phases =>
    [
        ("zero_grad", ZeroGradSeconds),
        ("forward: modules", ForwardSeconds - ForwardBetweenModulesSeconds),
        ("forward: between modules and loss", ForwardBetweenModulesSeconds),
        ("backward: modules", BackwardSeconds - BackwardBetweenModulesSeconds),
        ("backward: between modules", BackwardBetweenModulesSeconds),
        ("optimizer step", OptimizerSeconds),
    ];

    /// <summary>Memory by kind: what lives between steps (parameters, gradients, optimizer state) and what a step adds.</summary>
    public IReadOnlyList<(string Kind, long Bytes)> Memory =>
    [
        ("parameters", ParameterBytes),
        ("gradients", GradientBytes),
        ("optimizer state", OptimizerStateBytes),
        ("module outputs (activations)", ModuleOutputBytes),
        ("step peak above start", PeakOverStartBytes),
    ];

    /// <summary>The profile as text: the phases, the memory, and the modules by time (the <paramref name="top"/> slowest;
    /// all when null).</summary>
    public string ToText(int? top = null)
    {
        var c = CultureInfo.InvariantCulture;
        var text = new StringBuilder();
        text.AppendLine(c, $"{Title}: {TrainableParameters:N0} of {AllParameters:N0} parameters train; step {1000 * UnprofiledStepSeconds:0.0} ms " +
                           $"({1000 * StepSeconds:0.0} ms with the profile's hooks, x{Overhead:0.00}), mean of {Steps} step{(Steps == 1 ? "" : "s")}");
        foreach (var (phase, seconds) in Phases)
            text.AppendLine(c, $"  {phase,-36} {1000 * seconds,9:0.0} ms {Share(seconds, StepSeconds),6}");
        foreach (var (kind, bytes) in Memory)
            text.AppendLine(c, $"  {kind,-36} {bytes / 1e6,9:0.0} MB");
        text.AppendLine(c, $"  {"minor page faults per step",-36} {MinorPageFaultsPerStep,9:0}");
        text.AppendLine(c, $"  {"managed bytes per step",-36} {ManagedBytesPerStep / 1e6,9:0.00} MB, {CollectionsPerStep:0.##} collections");
        text.AppendLine(c, $"  {"module",-40} {"kind",-16} {"forward ms",10} {"backward ms",11} {"output MB",9} {"trains",10}");
        foreach (var m in Modules.OrderByDescending(m => m.TotalSeconds).Take(top ?? Modules.Count))
            text.AppendLine(c, $"  {m.Path,-40} {m.Kind,-16} {1000 * m.ForwardSeconds,10:0.00} {1000 * m.BackwardSeconds,11:0.00} {m.OutputBytes / 1e6,9:0.0} {m.TrainableParameters,10:N0}");
        return text.ToString();
    }

    public override string ToString() => ToText(top: 10);

    static string Share(double part, double whole) => whole > 0 ? (part / whole).ToString("P0", CultureInfo.InvariantCulture) : "";

    /// <summary>
    /// Profiles <paramref name="steps"/> training steps of <paramref name="model"/>: zero the gradients, compute
    /// <paramref name="loss"/> (a forward pass on one batch, returning a scalar), backward, and an optimizer step over the
    /// parameters that have <c>requires_grad</c>. Without <paramref name="optimizerStep"/> the step is AdamW's with a
    /// learning rate of 0: its arithmetic runs, and the model's weights do not change. The model's gradients are cleared
    /// and its training/eval mode restored afterwards.
    /// </summary>
    /// <param name="model">The model whose modules are profiled (a PeftModel's <c>Model</c>, or a plain model).</param>
    /// <param name="loss">One batch's loss; called once per step.</param>
    /// <param name="title">What the profile shows, e.g. "LoRA r=8 step" (default: the model's type).</param>
    /// <param name="steps">Steps measured, with and without the hooks (default 3), after one warm-up step.</param>
    /// <param name="optimizerStep">Runs the optimizer on the trained parameters; default AdamW with learning rate 0.</param>
    /// <param name="optimizerStateCopies">How many buffers shaped like each trained parameter the optimizer keeps
    /// (AdamW and Adam 2, SGD with momentum 1), for <see cref="OptimizerStateBytes"/>.</param>
    public static TrainingProfile Measure(nn.Module model, Func<Tensor> loss, int steps = 3, string? title = null,
                                          Action<IReadOnlyList<Parameter>>? optimizerStep = null, int optimizerStateCopies = 2)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), steps, "A profile measures at least one step, e.g. steps: 3.");
        if (optimizerStateCopies < 0) throw new ArgumentOutOfRangeException(nameof(optimizerStateCopies), optimizerStateCopies, "An optimizer keeps 0 or more buffers per parameter (AdamW 2).");
        var trained = model.parameters().Where(p => p.requires_grad).ToList();
        if (trained.Count == 0)
            throw new ArgumentException("Nothing in the model trains (no parameter has requires_grad), so it has no training step to profile; attach an adapter or unfreeze parameters first.", nameof(model));

        using var adamW = optimizerStep is null ? new AdamWOptimizer() : null;
        optimizerStep ??= parameters => adamW!.Step(parameters, learningRate: 0);
        bool wasTraining = model.training;
        var units = Units(model);
        var session = new Session(units.Count, model.parameters().Any(p => p.device_type == DeviceType.CUDA));
        model.train();
        ProcessMemory.PreferReuseForTraining();   // the allocator the Trainer trains with
        try
        {
            session.Step(loss, trained, optimizerStep);   // warm-up: optimizer state, allocator, kernels

            // Plain steps: the step's own time and memory.
            long managedBefore = GC.GetTotalAllocatedBytes(precise: true);
            int collectionsBefore = GC.CollectionCount(0);
            long faultsBefore = ProcessMemory.MinorPageFaults();
            long peak = 0;
            var plain = new List<double>();
            for (int i = 0; i < steps; i++)
            {
                ProcessMemory.ResetPeak();
                long start = ProcessMemory.Resident();
                plain.Add(session.Step(loss, trained, optimizerStep).Total);
                peak = Math.Max(peak, ProcessMemory.Peak() - start);
            }
            long faults = ProcessMemory.MinorPageFaults() - faultsBefore;
            long managed = GC.GetTotalAllocatedBytes(precise: true) - managedBefore;
            int collections = GC.CollectionCount(0) - collectionsBefore;

            // Profiled steps: the hooks record when each module's forward and backward start and end.
            var hooks = new List<Action>();   // each removes one hook
            try
            {
                for (int u = 0; u < units.Count; u++) hooks.AddRange(session.Hook(units[u].Module, u));
                for (int i = 0; i < steps; i++) session.Step(loss, trained, optimizerStep, profiled: true);
            }
            finally
            {
                foreach (var remove in hooks) remove();
            }

            var order = Enumerable.Range(0, units.Count).Where(u => session.FirstCall[u] >= 0).OrderBy(u => session.FirstCall[u]);
            return new TrainingProfile
            {
                Title = title ?? $"training step of {model.GetName()}",
                Steps = steps,
                Modules = order.Select(u => new ModuleProfile(units[u].Path, units[u].Module.GetType().Name,
                    session.Forward[u] / steps, session.Backward[u] / steps, session.OutputBytes[u],
                    units[u].Module.parameters().Sum(p => p.numel()), units[u].Module.parameters().Where(p => p.requires_grad).Sum(p => p.numel()))).ToList(),
                StepSeconds = session.Totals.Total / steps,
                UnprofiledStepSeconds = plain.Average(),
                ZeroGradSeconds = session.Totals.ZeroGrad / steps,
                ForwardSeconds = session.Totals.Forward / steps,
                BackwardSeconds = session.Totals.Backward / steps,
                OptimizerSeconds = session.Totals.Optimizer / steps,
                ForwardBetweenModulesSeconds = session.ForwardBetween / steps,
                BackwardBetweenModulesSeconds = session.BackwardBetween / steps,
                ParameterBytes = model.parameters().Sum(p => p.numel() * p.ElementSize),
                GradientBytes = trained.Sum(p => p.numel() * p.ElementSize),
                OptimizerStateBytes = optimizerStateCopies * trained.Sum(p => p.numel() * p.ElementSize),
                ModuleOutputBytes = session.OutputBytes.Sum(),
                PeakOverStartBytes = Math.Max(0, peak),
                MinorPageFaultsPerStep = (double)faults / steps,
                ManagedBytesPerStep = managed / steps,
                CollectionsPerStep = (double)collections / steps,
                TrainableParameters = trained.Sum(p => p.numel()),
                AllParameters = model.parameters().Sum(p => p.numel()),
            };
        }
        finally
        {
            model.zero_grad();
            model.train(wasTraining);
        }
    }

    // The modules timed one by one: every adapter layer (its base layer and adapters as one), and every module without
    // children outside them. Only Module<Tensor, Tensor> can be hooked; others run inside "between modules".
    static List<(string Path, Module<Tensor, Tensor> Module)> Units(nn.Module model)
    {
        var units = new List<(string, Module<Tensor, Tensor>)>();
        var insideAdapterLayer = new List<string>();
        foreach (var (path, module) in model.named_modules())
        {
            if (path.Length == 0) continue;
            if (insideAdapterLayer.Any(prefix => path.StartsWith(prefix + ".", StringComparison.Ordinal))) continue;
            if (module is AdapterLayer layer)
            {
                insideAdapterLayer.Add(path);
                units.Add((path, layer));
            }
            else if (!module.children().Any() && module is Module<Tensor, Tensor> leaf)
                units.Add((path, leaf));
        }
        return units;
    }

    enum Mark { ForwardEnter, ForwardExit, BackwardEnter, BackwardExit }

    readonly record struct PhaseTimes(double ZeroGrad, double Forward, double Backward, double Optimizer)
    {
        public double Total => ZeroGrad + Forward + Backward + Optimizer;

        public static PhaseTimes operator +(PhaseTimes a, PhaseTimes b) =>
            new(a.ZeroGrad + b.ZeroGrad, a.Forward + b.Forward, a.Backward + b.Backward, a.Optimizer + b.Optimizer);
    }

    /// <summary>The clock and the event lists of one profile.</summary>
    sealed class Session(int units, bool cuda)
    {
        readonly Stopwatch _clock = Stopwatch.StartNew();
        readonly List<(double Time, int Unit, Mark Mark)> _events = [];
        readonly List<Tensor> _gradients = [];   // gradient handles the marker nodes passed on, freed after each backward
        bool _recording;

        public readonly double[] Forward = new double[units], Backward = new double[units];
        public readonly long[] OutputBytes = new long[units];
        public readonly long[] FirstCall = Enumerable.Repeat(-1L, units).ToArray();
        public double ForwardBetween, BackwardBetween;
        public PhaseTimes Totals;
        long _calls;

        double Now()
        {
            if (cuda) torch.cuda.synchronize();
            return _clock.Elapsed.TotalSeconds;
        }

        void Record(int unit, Mark mark)
        {
            if (_recording) _events.Add((Now(), unit, mark));
        }

        public IEnumerable<Action> Hook(Module<Tensor, Tensor> module, int unit)
        {
            var pre = module.register_forward_pre_hook((_, input) =>
            {
                if (!_recording) return input;
                if (FirstCall[unit] < 0) FirstCall[unit] = _calls++;
                Record(unit, Mark.ForwardEnter);
                return input.requires_grad ? Marker.Mark(input, gradient => Passed(unit, Mark.BackwardExit, gradient)) : input;
            });
            yield return pre.remove;
            var post = module.register_forward_hook((_, _, output) =>
            {
                if (!_recording) return output;
                if (OutputBytes[unit] == 0) OutputBytes[unit] = output.numel() * output.ElementSize;
                var marked = output.requires_grad ? Marker.Mark(output, gradient => Passed(unit, Mark.BackwardEnter, gradient)) : output;
                Record(unit, Mark.ForwardExit);
                return marked;
            });
            yield return post.remove;
        }

        // Autograd reached a marker: note the time, and keep the gradient's handle to free once the backward is over.
        void Passed(int unit, Mark mark, Tensor gradient)
        {
            Record(unit, mark);
            lock (_gradients) _gradients.Add(gradient);
        }

        /// <summary>One training step, timed by phase; with <paramref name="profiled"/>, its events are recorded and
        /// attributed to the modules.</summary>
        public PhaseTimes Step(Func<Tensor> loss, IReadOnlyList<Parameter> trained, Action<IReadOnlyList<Parameter>> optimizerStep, bool profiled = false)
        {
            using var scope = NewDisposeScope();
            _recording = profiled;
            _events.Clear();
            double t0 = Now();
            foreach (var p in trained) p.grad?.zero_();
            double t1 = Now();
            var value = loss();
            if (value.numel() != 1)
                throw new ArgumentException($"The loss function returned a tensor of shape [{string.Join(", ", value.shape)}]; a training step needs a scalar loss.");
            double t2 = Now();
            value.backward();
            double t3 = Now();
            _recording = false;
            lock (_gradients)
            {
                foreach (var g in _gradients) g.Dispose();
                _gradients.Clear();
            }
            optimizerStep(trained);
            double t4 = Now();
            var times = new PhaseTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3);
            if (profiled)
            {
                Attribute(t1, t2, t3);
                Totals += times;
            }
            return times;
        }

        // Splits [forward start, forward end) and [backward start, backward end) into the intervals between events and
        // gives each to the module it belongs to (see the remarks on TrainingProfile).
        void Attribute(double forwardStart, double backwardStart, double backwardEnd)
        {
            var open = new Stack<int>();
            double previous = forwardStart;
            foreach (var (time, unit, mark) in _events.Where(e => e.Mark is Mark.ForwardEnter or Mark.ForwardExit))
            {
                Charge(open.Count > 0 ? open.Peek() : -1, time - previous, Forward, ref ForwardBetween);
                if (mark == Mark.ForwardEnter) open.Push(unit);
                else if (open.Count > 0) open.Pop();
                previous = time;
            }
            Charge(-1, backwardStart - previous, Forward, ref ForwardBetween);   // the loss after the last module

            int current = -1;
            previous = backwardStart;
            foreach (var (time, unit, mark) in _events.Where(e => e.Mark is Mark.BackwardEnter or Mark.BackwardExit))
            {
                Charge(current, time - previous, Backward, ref BackwardBetween);
                current = mark == Mark.BackwardEnter ? unit : -1;
                previous = time;
            }
            Charge(current, backwardEnd - previous, Backward, ref BackwardBetween);
        }

        static void Charge(int unit, double seconds, double[] perUnit, ref double between)
        {
            if (unit >= 0) perUnit[unit] += seconds;
            else between += seconds;
        }
    }

    /// <summary>An identity in the forward whose backward calls an action with the gradient it passes on: marks when
    /// autograd reaches a tensor.</summary>
    sealed class Marker : autograd.SingleTensorFunction<Marker>
    {
        public override string Name => "ProfileMarker";

        public static Tensor Mark(Tensor input, Action<Tensor> passed) => apply(input, passed);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            ctx.save_data("passed", vars[1]);
            // A copy, not a view: a view made inside a custom function may not be changed in place later, and models do.
            return ((Tensor)vars[0]).clone();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            // The handle goes back to native code, which takes its own reference; the session frees it after the backward.
            ((Action<Tensor>)ctx.get_data("passed"))(gradOutput);
            return [gradOutput, null!];
        }
    }
}

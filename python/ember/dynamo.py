"""The dynamo path: torch.export -> decompose -> import -> lower -> partition -> build -> GraphModule.

    exp_program = torch.export.export(model, tuple(inputs))
    compiled = ember.dynamo.compile(exp_program, inputs)   # a torch.fx.GraphModule
    compiled(*inputs)

Engine segments become calls to ``torch.ops.ember.execute_engine(inputs, engine)``; everything
else stays as PyTorch nodes.
"""

from __future__ import annotations

import logging
import operator
import sys
import time
import warnings
from typing import Any, Sequence

import torch
import torch.fx

from ember import _C, _precision, _progress, _runtime, _timing_cache, engine_cache
from ember import logging as ember_logging
from ember._importer import DTYPE_NAMES, PYTORCH_OP, import_program
from ember._input import Input
from ember._settings import CompileSettings, op_key
from ember import extending as _extending
from ember.extending import converter, lowering_pass, substitute
from ember import plugins as _plugins
from ember.plugins import plugin, remove_plugin

__all__ = ["trace", "compile", "decomposition_table", "CompilationReport", "converter",
           "lowering_pass", "substitute", "plugin", "remove_plugin"]


# ---------------------------------------------------------------------------------------------
# Inputs and tracing

def _as_inputs(inputs: Sequence[Any] | None) -> list[Input]:
    out = []
    for i, x in enumerate(inputs or []):
        if isinstance(x, Input):
            out.append(x)
        elif isinstance(x, torch.Tensor):
            out.append(Input.from_tensor(x))
        else:
            raise TypeError(f"ember: input {i} must be a torch.Tensor or ember.Input, got {type(x).__name__}")
    return out


def _examples(inputs: Sequence[Any], device: torch.device | str = "cpu") -> tuple:
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            out.append(x)
        else:
            # Trace with the opt shape, but never 1 on a dynamic dim (torch.export specializes 1).
            shape = [max(o, min(2, hi)) if lo != hi else o
                     for lo, o, hi in zip(x.min_shape, x.opt_shape, x.max_shape)]
            t = Input(shape=shape, dtype=x.dtype).example()
            out.append(t.to(device))
    return tuple(out)


def _module_device(module: torch.nn.Module) -> torch.device:
    """Where the module's parameters (or buffers) live: example inputs are made there."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _program_device(ep: torch.export.ExportedProgram) -> torch.device:
    """Where the program's user inputs, parameters, buffers and constants are: the CUDA device
    when any of them is on one (engines are built for it by default), else the CPU. Tensors on
    two different GPUs are an error: an engine is bound to one."""
    devices = set()
    for node in ep.graph_module.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor):
            devices.add(val.device)
    for t in list(ep.state_dict.values()) + list(ep.constants.values()):
        if isinstance(t, torch.Tensor):
            devices.add(t.device)
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    if len(cuda) > 1:
        raise ValueError(f"ember: the program's parameters and inputs are on {len(cuda)} GPUs "
                         f"({', '.join(map(str, cuda))}); an engine runs on one: move them to "
                         "one device, or name it with device='cuda:<index>'")
    return cuda[0] if cuda else torch.device("cpu")


def _dynamic_shapes(inputs: Sequence[Any]):
    specs = []
    any_dynamic = False
    for i, x in enumerate(inputs):
        if isinstance(x, Input) and x.is_dynamic():
            any_dynamic = True
            name = x.name or f"input{i}"
            specs.append({d: torch.export.Dim(f"{name}_d{d}", min=x.min_shape[d], max=x.max_shape[d])
                          for d in x.dynamic_dims()})
        else:
            specs.append(None)
    return tuple(specs) if any_dynamic else None


def trace(model: torch.nn.Module, inputs: Sequence[Any], **kwargs) -> torch.export.ExportedProgram:
    """torch.export.export with dynamic dims (torch.export.Dim) made from the Inputs' ranges."""
    if kwargs:
        unknown = ", ".join(kwargs)
        raise TypeError(f"ember.dynamo.trace: unexpected arguments {unknown}")
    examples = _examples(inputs, _module_device(model))
    with _extending.substitutions_applied(model):  # ember.dynamo.substitute rules
        return torch.export.export(model, examples, dynamic_shapes=_dynamic_shapes(inputs))


# ---------------------------------------------------------------------------------------------
# Decompositions

def decomposition_table() -> dict:
    """PyTorch's default decompositions, minus the ops Ember converts whole (layer norm,
    attention, linear, ...): decompose what has no converter, keep what converts better whole."""
    table = torch.export.default_decompositions()
    converted = set(_C.converter_ops())
    for op in list(table.keys()):
        try:
            key = op_key(op)
        except AttributeError:
            continue
        if key in converted:
            del table[op]
    return table


# ---------------------------------------------------------------------------------------------
# Compilation

class CompilationReport:
    """What a compile did: the partition, each engine's build, the nodes left to PyTorch.

    `fallback` lists every node that runs in PyTorch, as (fx name, op, reason): nodes the
    partitioner left out, nodes the importer could not represent ("not imported: ..."), the
    nodes of a segment whose build failed, and nodes re-run in PyTorch after lowering removed
    them ("re-run in PyTorch: ..."). Size arithmetic and runtime asserts (no tensor result) are
    not fallback; `skipped` lists them with every other node the importer left out."""

    def __init__(self):
        self.partition_report = ""
        self.lowering_log: list[str] = []
        #: One dict per engine: nodes (count), fx_nodes and ops (of its segment), inputs,
        #: outputs, plan_bytes, build_seconds, build_log.
        self.engines: list[dict] = []
        self.skipped: list[tuple[str, str, str]] = []
        self.fallback: list[tuple[str, str, str]] = []
        self.build_failures: list[tuple[int, str]] = []
        #: Nodes autocast kept in f32: (fx name, op, reason).
        self.autocast_kept: list[tuple[str, str, str]] = []
        #: FX names of imported nodes that lowering removed from the IR (folded into a
        #: constant at compile time, a no-op, merged into a pattern): they run nowhere at run
        #: time unless a PyTorch node re-runs them (then they are in `fallback`).
        self.lowered_away: list[str] = []
        self.seconds = 0.0

    def engine_nodes(self) -> int:
        """Nodes that run inside built engines."""
        return sum(e["nodes"] for e in self.engines)

    def __str__(self) -> str:
        lines = [self.partition_report.rstrip()]
        if self.autocast_kept:
            lines.append("Kept in f32 by autocast:")
            lines += [f"  {name or '(compiler-made)'} ({op}): {why}"
                      for name, op, why in self.autocast_kept]
        size_nodes = [s for s in self.skipped if s[0] not in {f[0] for f in self.fallback}]
        if size_nodes:
            lines.append("Not imported, no tensor work (sizes, asserts):")
            lines += [f"  {name} ({target}): {why}" for name, target, why in size_nodes]
        for i, e in enumerate(self.engines):
            lines.append(f"engine {i}: {e['nodes']} nodes, {len(e['inputs'])} inputs, "
                         f"{len(e['outputs'])} outputs, plan {e['plan_bytes']} bytes, "
                         f"built in {e['build_seconds']:.2f} s")
        for seg, why in self.build_failures:
            lines.append(f"segment {seg} failed to build and runs in PyTorch: {why}")
        late = [f for f in self.fallback if f[2].startswith(_RERUN)]
        if late:
            lines.append("Re-run in PyTorch after lowering:")
            lines += [f"  {op} '{name}': {why}" for name, op, why in late]
        return "\n".join(lines)


def _symbol_ranges(ep: torch.export.ExportedProgram, inputs: list[Input],
                   user_inputs: list[str]) -> dict[str, tuple[int, int, int]]:
    """min/opt/max of every export symbol that is an input dim."""
    placeholders = {n.name: n for n in ep.graph_module.graph.nodes if n.op == "placeholder"}
    ranges: dict[str, tuple[int, int, int]] = {}
    constraints = {str(k): v for k, v in ep.range_constraints.items()}
    for i, name in enumerate(user_inputs):
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for d, size in enumerate(val.shape):
            if not isinstance(size, torch.SymInt) or not size.node.expr.is_Symbol:
                continue
            sym = str(size.node.expr)
            vr = constraints.get(sym)
            lo = int(vr.lower) if vr is not None else 1
            hi_raw = vr.upper if vr is not None else None
            spec = inputs[i] if i < len(inputs) else None
            if spec is not None and spec.is_dynamic() and d in spec.dynamic_dims():
                lo, opt, hi = spec.min_shape[d], spec.opt_shape[d], spec.max_shape[d]
            else:
                try:
                    hi = int(hi_raw)
                # torch's int_oo (Dim.DYNAMIC, Dim.AUTO) fails int() with AttributeError.
                except (TypeError, ValueError, OverflowError, AttributeError):
                    raise ValueError(
                        f"ember: input '{name}' dim {d} ({sym}) has no upper bound; give it a "
                        f"range with ember.Input(min_shape=, opt_shape=, max_shape=) or "
                        f"torch.export.Dim(max=...)") from None
                hint = size.node.hint
                opt = int(hint) if hint is not None else lo
                opt = min(max(opt, lo), hi)
            prev = ranges.get(sym)
            if prev is not None and prev != (lo, opt, hi):
                lo, opt, hi = max(lo, prev[0]), max(opt, prev[1]), min(hi, prev[2])
            ranges[sym] = (lo, opt, hi)
    return ranges


def compile(exported_program: torch.export.ExportedProgram,
            inputs: Sequence[Any] | None = None, *, report: CompilationReport | None = None,
            _debug_intermediates: bool = False,
            _torch_executed_nodes: Sequence[tuple[str, str]] = (),
            **kwargs) -> torch.fx.GraphModule:
    """Compiles an ExportedProgram into a torch.fx.GraphModule whose engine segments run
    through torch.ops.ember.execute_engine. Keyword arguments are CompileSettings fields."""
    args = (exported_program, inputs)
    more = dict(report=report, _debug_intermediates=_debug_intermediates,
                _torch_executed_nodes=_torch_executed_nodes, **kwargs)
    if kwargs.get("debug"):  # the shortcut for `with ember.logging.debug():`
        with ember_logging.debug():
            return _compile(*args, **more)
    return _compile(*args, **more)


def _compile(exported_program: torch.export.ExportedProgram,
             inputs: Sequence[Any] | None = None, *, report: CompilationReport | None = None,
             _debug_intermediates: bool = False,
             _torch_executed_nodes: Sequence[tuple[str, str]] = (),
             **kwargs) -> torch.fx.GraphModule:
    settings = CompileSettings.from_kwargs(**kwargs)
    if not isinstance(exported_program, torch.export.ExportedProgram):
        raise TypeError("ember.dynamo.compile takes a torch.export.ExportedProgram (use "
                        "ember.dynamo.trace or torch.export.export first, or ember.compile for "
                        f"an nn.Module); got {type(exported_program).__name__}")
    start = time.perf_counter()
    if settings.workspace_size:
        warnings.warn(f"ember: workspace_size={settings.workspace_size} is not applied: in "
                      "Torch-TensorRT it caps the scratch memory of tactics, and Ember's engines "
                      "size their scratch from the algorithms they pick (it limits nothing "
                      "else). Leave it out to silence this.", stacklevel=2)
    report = report if report is not None else CompilationReport()
    specs = _as_inputs(inputs)
    program_device = _program_device(exported_program)
    backend, device_index = settings.resolve_device(program_device)
    csettings = settings.to_compiler(backend)
    # Nodes whose converter failed in an earlier attempt (see the ConversionError below).
    csettings["torch_executed_nodes"] = list(_torch_executed_nodes)
    _runtime.load_library()

    ep = exported_program.run_decompositions(decomposition_table())
    fx_pass_log = _extending.run_lowering_passes(ep)  # ember.dynamo.lowering_pass rules
    if settings.custom_ops_as_plugins:
        added = _plugins.make_custom_ops_plugins(ep.graph.nodes)
        fx_pass_log += [f"custom_ops_as_plugins: {key} runs as a plugin" for key in added]
    imported = import_program(ep, {}, program_device.type)
    _warn_unmatched_executed(ep, csettings)
    ranges = _symbol_ranges(ep, specs, imported.user_inputs)
    for name, (lo, opt, hi) in ranges.items():
        imported.graph.add_symbol(name, lo, opt, hi)
    report.skipped = imported.skipped
    if settings.enable_autocast:
        csettings["autocast_output_magnitudes"] = _precision.calibrate(
            ep, imported.user_inputs, settings, inputs)
    lowered = imported.graph.lower_report(csettings)
    report.lowering_log = fx_pass_log + list(lowered["log"])
    report.autocast_kept = list(lowered["autocast_kept"])
    if _debug_intermediates:  # ember.debug.compare: every named tensor leaves its engine
        imported.graph.mark_intermediates_as_outputs()
    part = _C.partition(imported.graph, csettings, settings.use_global_partitioner)
    report.partition_report = part.report()
    # ember::pytorch nodes (what the importer could not represent) under their own op's name.
    targets = {name: target for name, target, _ in imported.skipped}
    report.fallback = [(name, targets.get(name, op) if op == PYTORCH_OP else op, why)
                       for name, op, why in part.fallback()]
    _log_partition(report, settings)
    if settings.dryrun:
        return ep.module()

    segments = part.segments()
    in_ir = {name for seg in segments for name in seg["nodes"]}
    report.lowered_away = [name for name in imported.nodes if name not in in_ir]
    engines: dict[int, Any] = {}
    timing_cache = _timing_cache.load(settings.timing_cache)
    progress = _progress.BuildProgress(sum(bool(seg["engine"]) for seg in segments))
    for k, seg in enumerate(segments):
        if not seg["engine"]:
            continue
        progress.step(k, len(seg["nodes"]))
        try:
            with _build_device(backend, device_index):
                built = engine_cache.build_segment(imported.graph, part, k, settings,
                                                   timing_cache, compiler_settings=csettings)
        except Exception as e:  # noqa: BLE001 - reported, or re-raised on request
            if settings.pass_through_build_failures:
                raise
            if isinstance(e, _C.ConversionError) and e.node and e.node not in dict(
                    _torch_executed_nodes):
                # One node's converter failed: that node alone goes to PyTorch, the rest is
                # partitioned and built again.
                warnings.warn(f"ember: {e}; node '{e.node}' runs in PyTorch")
                report.engines.clear()
                report.build_failures.clear()
                progress.close()
                return compile(exported_program, inputs, report=report,
                               _debug_intermediates=_debug_intermediates,
                               _torch_executed_nodes=[*_torch_executed_nodes,
                                                      (e.node, f"converter failed: {e}")],
                               **kwargs)
            warnings.warn(f"ember: engine segment {k} failed to build and runs in PyTorch: {e}")
            _build_log.warning("engine segment %d failed to build and runs in PyTorch: %s", k, e)
            report.build_failures.append((k, str(e)))
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            report.fallback += [(name, op, f"engine segment {k} failed to build: {first_line}")
                                for name, op in zip(seg["nodes"], seg["ops"])]
            continue
        meta = {"backend": csettings["backend"], "cuda_graphs": bool(settings.cuda_graphs),
                "inputs": [_io_meta(io) for io in built["inputs"]],
                "outputs": [_io_meta(io) for io in built["outputs"]]}
        if csettings["backend"] == "cuda":
            meta["device_index"] = device_index
        engines[k] = (_runtime.make_engine(built["plan"], meta), built)
        report.engines.append({"nodes": len(seg["nodes"]), "fx_nodes": list(seg["nodes"]),
                               "ops": list(seg["ops"]), "inputs": built["inputs"],
                               "outputs": built["outputs"], "plan_bytes": len(built["plan"]),
                               "build_seconds": built["build_seconds"],
                               "build_log": built["build_log"],
                               "cached": built["cached"], "key": built["key"]})
        progress.done(k, len(seg["nodes"]), built["build_seconds"], built["cached"])
        # The C++ builder's messages (its pass log), forwarded to the logger; a layer the back
        # end runs slower than its kind promises ("degraded: ...") is a warning.
        for line in built["build_log"]:
            if line.startswith("degraded: "):
                _build_log.warning("engine %d: %s", k, line)
            else:
                _build_log.debug("engine %d: %s", k, line)
    progress.close()

    _timing_cache.save(timing_cache, settings.timing_cache)
    gm, origin = _stitch(ep, imported, segments, engines)
    late = _rerun_nodes(gm, origin, report)
    if late and settings.require_full_compilation:
        raise RuntimeError(f"require_full_compilation=True, but {len(late)} node(s) run in "
                           f"PyTorch after lowering:{_listing(late)}")
    report.fallback += late
    _warn_if_mostly_pytorch(report, segments, settings)
    report.seconds = time.perf_counter() - start
    gm.ember_report = report
    gm.ember_settings = settings
    return gm


_partition_log = ember_logging.get_logger("partition")
_build_log = ember_logging.get_logger("build")


def _log_partition(report: CompilationReport, settings: CompileSettings) -> None:
    """The partition report and the fallback reasons, through the "ember.partition" logger.
    dryrun prints the report (its whole point) whatever the logging setup."""
    text = report.partition_report.rstrip()
    for name, op, why in report.autocast_kept:
        text += f"\nautocast keeps {name or '(compiler-made)'} ({op}) in f32: {why}"
    if report.skipped:
        text += "\nNot imported (run in PyTorch):\n" + "\n".join(
            f"  {name} ({target}): {why}" for name, target, why in report.skipped)
    if settings.dryrun and not _partition_log.isEnabledFor(logging.INFO):
        print(text, file=sys.stderr)
        return
    fell_back = bool(report.fallback or report.skipped)
    _partition_log.log(logging.INFO if fell_back else logging.DEBUG, "%s", text)


def _warn_unmatched_executed(ep: torch.export.ExportedProgram, csettings: dict) -> None:
    """A torch_executed_ops / torch_executed_modules entry that matches no node of the
    (decomposed) program does nothing: say so, with what would have matched."""
    from ember._importer import module_info
    ops, paths, types = set(), set(), set()
    for node in ep.graph_module.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        ops.add(op_key(node.target))
        path, mtypes = module_info(node)
        if path:
            parts = path.split(".")
            paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        types.update(mtypes)
    for pattern in csettings["torch_executed_ops"]:
        if not any(op == pattern or op.startswith(pattern + ".") for op in ops):
            warnings.warn(f"ember: torch_executed_ops entry '{pattern}' matches no node of the "
                          "decomposed program, so it changes nothing (the ops present: "
                          f"{', '.join(sorted(ops)[:12])}{', ...' if len(ops) > 12 else ''})",
                          stacklevel=3)
    for pattern in csettings["torch_executed_modules"]:
        if pattern in paths or any(t == pattern or t.endswith("." + pattern) for t in types):
            continue
        names = sorted({t.rsplit(".", 1)[-1] for t in types})
        warnings.warn(f"ember: torch_executed_modules entry '{pattern}' matches no module of the "
                      "program (by qualified name such as 'layer1.0' or by class such as "
                      f"'Linear'), so it changes nothing (classes present: "
                      f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''})",
                      stacklevel=3)


#: The reason prefix of nodes the stitched program runs in PyTorch that the partition never saw.
_RERUN = "re-run in PyTorch"


def _listing(nodes: Sequence[tuple[str, str, str]]) -> str:
    return "".join(f"\n  {op} '{name}': {why}" for name, op, why in nodes)


def _rerun_nodes(gm: torch.fx.GraphModule, origin: dict, report: CompilationReport
                 ) -> list[tuple[str, str, str]]:
    """Nodes the stitched program runs in PyTorch that no fallback entry names: a node lowering
    removed from the IR (a no-op, a folded constant, a fused pattern) that a PyTorch node or
    the output still reads, so PyTorch recomputes it. Size arithmetic is left out."""
    from ember._importer import is_size_node
    known = {name for name, _, _ in report.fallback}
    out = []
    for node in gm.graph.nodes:
        old = origin.get(node)
        if old is None or old.op != "call_function" or old.name in known or is_size_node(old):
            continue
        if old.target is operator.getitem and isinstance(old.args[0], torch.fx.Node) and \
                old.args[0].name in known:
            continue
        op = op_key(old.target) if isinstance(old.target, torch._ops.OpOverload) \
            else str(old.target)
        readers = ", ".join(sorted(u.name for u in old.users)) or "the output"
        out.append((old.name, op, f"{_RERUN}: lowering removed it from the IR, but {readers} "
                    "outside the engines reads it"))
    return out


def _warn_if_mostly_pytorch(report: CompilationReport, segments: list,
                            settings: CompileSettings) -> None:
    """One warning when no engine was built, or when more nodes run in PyTorch than in engines:
    the compiled program would then mostly be PyTorch, which the user should hear about."""
    fallback = len(report.fallback)
    if fallback == 0:
        return
    if not report.engines:
        below = [why for _, _, why in report.fallback if "below min_block_size" in why]
        if report.build_failures:
            first = (report.build_failures[0][1].splitlines() or ["?"])[0]
            why = (f"every engine build failed ({len(report.build_failures)}; first: {first}). "
                   "Pass pass_through_build_failures=True to raise the build error")
        elif below:
            why = (f"every engine segment is below min_block_size={settings.min_block_size} "
                   f"(the largest candidate has {_largest_candidate(report)} compute nodes). "
                   f"Lower min_block_size (for example min_block_size=1) to build them")
        else:
            why = ("no node can run in an engine (see the fallback reasons: "
                   f"{_top_reasons(report)}). Check the dtypes and torch_executed_ops / "
                   "torch_executed_modules, or add converters")
        warnings.warn(f"ember: the compiled program builds no engine and runs all {fallback} "
                      f"node(s) in PyTorch: {why}.", stacklevel=3)
        return
    engine_nodes = report.engine_nodes()
    if fallback > engine_nodes:
        warnings.warn(f"ember: {fallback} node(s) run in PyTorch and only {engine_nodes} in "
                      f"{len(report.engines)} engine(s); most of the program is not compiled. "
                      f"Reasons: {_top_reasons(report)}. See the report (debug=True, or "
                      "report=ember.dynamo.CompilationReport()); lower min_block_size or drop "
                      "torch_executed_ops entries where those are the reason.", stacklevel=3)


def _top_reasons(report: CompilationReport, n: int = 3) -> str:
    """The most common fallback reasons with their counts, shortest form first."""
    from collections import Counter
    counts = Counter(why for _, _, why in report.fallback)
    return "; ".join(f"{c}x {why}" for why, c in counts.most_common(n))


def _largest_candidate(report: CompilationReport) -> int:
    import re
    sizes = [int(m.group(1)) for _, _, why in report.fallback
             for m in [re.search(r"segment has (\d+) compute nodes", why)] if m]
    return max(sizes, default=0)


def _build_device(backend: str, device_index: int | None):
    """A CUDA build times its tactics on the current device and records that GPU in the plan:
    make the engine's device current for the build (nothing to do without a GPU)."""
    import contextlib
    if backend == "cuda" and device_index is not None and torch.cuda.is_available():
        return torch.cuda.device(device_index)
    return contextlib.nullcontext()


def _io_meta(io: dict) -> dict:
    return {k: io[k] for k in ("name", "torch_dtype", "engine_dtype", "shape")}


def _attr_name(target: str) -> str:
    return "_w_" + "".join(c if c.isalnum() else "_" for c in target)


def _stitch(ep, imported, segments, engines) -> tuple[torch.fx.GraphModule, dict]:
    """Rebuilds the FX graph: engine segments become execute_engine calls, the rest is copied.

    Nodes are emitted on demand from the outputs (an iterative depth-first walk), so every node
    and engine call comes after what it reads, whatever order the segments have. An FX node an
    engine exports is read from the engine, never recomputed. Returns the module and, for each
    copied node, the FX node it copies (what the compile's fallback audit reads).
    """
    old = ep.graph_module.graph
    by_name = {n.name: n for n in old.nodes}
    seg_of_output: dict[str, tuple[int, int]] = {}
    for k, (engine, built) in engines.items():
        for i, io in enumerate(built["outputs"]):
            if io["fx_name"]:
                seg_of_output[io["fx_name"]] = (k, i)

    root = torch.nn.Module()
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    origin: dict[torch.fx.Node, torch.fx.Node] = {}
    done_segments: set[int] = set()

    for node in old.nodes:  # user inputs first, in order
        if node.op == "placeholder" and node.name not in imported.lifted:
            env[node] = graph.node_copy(node, lambda x: env[x])

    def deps(item):
        kind, x = item
        if kind == "seg":
            engine, built = engines[x]
            return [("node", by_name[io["fx_name"]]) for io in built["inputs"]]
        if x.name in seg_of_output:
            return [("seg", seg_of_output[x.name][0])]
        return [("node", y) for y in x.all_input_nodes]

    def is_done(item):
        kind, x = item
        return x in done_segments if kind == "seg" else x in env

    def build(item):
        kind, x = item
        if kind == "seg":
            engine, built = engines[x]
            attr = f"_ember_engine_{x}"
            setattr(root, attr, engine)
            eng = graph.get_attr(attr)
            args = [env[by_name[io["fx_name"]]] for io in built["inputs"]]
            call = graph.call_function(torch.ops.ember.execute_engine.default, (args, eng))
            call.meta["ember_outputs"] = [io["fx_name"] for io in built["outputs"]]
            for i, io in enumerate(built["outputs"]):
                if not io["fx_name"]:
                    continue
                out = graph.call_function(operator.getitem, (call, i))
                src = by_name[io["fx_name"]]
                out.meta = dict(src.meta)
                out.meta["ember_source"] = src.name  # the FX node it stands for
                env[src] = out
            done_segments.add(x)
            return
        if x.op == "placeholder":  # a lifted parameter, buffer or constant
            kind_name, target = imported.lifted[x.name]
            attr = _attr_name(target)
            t = imported.constants[x.name]
            if not hasattr(root, attr):
                if kind_name == "PARAMETER":
                    root.register_parameter(attr, torch.nn.Parameter(t, requires_grad=False))
                else:
                    root.register_buffer(attr, t)
            env[x] = graph.get_attr(attr)
            env[x].meta = dict(x.meta)
            return
        env[x] = graph.node_copy(x, lambda y: env[y])
        env[x].meta["ember_source"] = x.name
        origin[env[x]] = x

    def ensure(target):
        stack = [("node", target)]
        active = set()
        while stack:
            item = stack[-1]
            if is_done(item):
                stack.pop()
                continue
            pending = [d for d in deps(item) if not is_done(d)]
            if pending:
                if item in active:
                    raise RuntimeError(f"ember: internal error, cycle at {item}")
                active.add(item)
                stack.extend(pending)
                continue
            build(item)
            active.discard(item)
            stack.pop()

    output = next(n for n in old.nodes if n.op == "output")
    ensure(output)
    # Only the user outputs (eval programs mutate no buffers).
    from torch.export.graph_signature import OutputKind
    user_idx = [i for i, s in enumerate(ep.graph_signature.output_specs)
                if s.kind == OutputKind.USER_OUTPUT]
    new_out = env[output]
    flat = list(new_out.args[0])
    if len(user_idx) != len(flat):
        new_out.args = ([flat[i] for i in user_idx],)
    graph._codegen = torch.fx.graph._PyTreeCodeGen(torch.fx.graph._PyTreeInfo(
        orig_args=list(imported.user_inputs), in_spec=ep.call_spec.in_spec,
        out_spec=ep.call_spec.out_spec))
    graph.eliminate_dead_code()
    gm = torch.fx.GraphModule(root, graph)
    return gm, origin

"""Per-layer accuracy report: where does a compiled engine drift from the model in f32?

    report = ember.debug.compare(model, {"enable_autocast": True}, inputs)
    print(report)                 # table: per layer dtype, relative error, cosine, max abs error
    report.to_json("acc.json")    # the same as JSON
    report.first_jump, report.worst

compare() compiles a debug version of the program (the same settings, with every tensor PyTorch
can name marked as an engine output, so each layer's result leaves its engine), runs it, runs
the model's FX graph in f32 with PyTorch, and matches the two by FX node name. docs/precision.md
explains how to read the report.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.fx

__all__ = ["compare", "AccuracyReport", "LayerError"]

#: A layer "jumps" when its relative error is at least this many times the largest relative
#: error of every layer before it, and above the noise floor of its dtype.
JUMP_FACTOR = 10.0
#: Relative error that rounding to the dtype and a few layers of it give (f16 rounds at
#: 2^-11 = 4.9e-4, bf16 at 2^-8 = 3.9e-3): errors below it are not a jump.
NOISE_FLOOR = {"f32": 1e-5, "f16": 5e-3, "bf16": 4e-2}
#: The largest finite f16.
F16_MAX = 65504.0


@dataclass
class LayerError:
    """One layer (FX node) compared with its f32 reference."""
    index: int            #: Position in the FX graph.
    node: str             #: FX node name ("convolution_3").
    op: str               #: "aten::convolution".
    module: str           #: Module path ("layer1.0.conv1"), "" when unknown.
    where: str            #: "engine" or "pytorch".
    dtype: str            #: The dtype it was computed in ("f16").
    rel_error: float      #: ||y - ref|| / ||ref|| (inf when y has inf/nan that ref has not).
    cosine: float         #: cosine similarity of y and ref (nan when either is zero).
    max_abs_error: float  #: max |y - ref|.
    ref_max_abs: float    #: max |ref| (a value past 65504 overflows f16).


@dataclass
class AccuracyReport:
    """The result of compare(): per-layer errors in graph order, the first jump, the worst."""
    layers: list[LayerError] = field(default_factory=list)
    outputs: list[LayerError] = field(default_factory=list)
    first_jump: LayerError | None = None
    worst: LayerError | None = None

    def suggestion(self) -> str:
        """What to exclude from autocast, as a setting."""
        bad = self.first_jump or self.worst
        if bad is None or bad.rel_error <= NOISE_FLOOR.get(bad.dtype, 1e-5):
            return "no layer stands out"
        text = (f"keep '{bad.node}' ({bad.op}) in f32: autocast_excluded_nodes="
                f"{{'^{bad.node}$'}}" + (f" (or its module: '^{bad.module}$')" if bad.module else ""))
        limit = F16_MAX if bad.dtype == "f16" else None
        if limit is not None and bad.ref_max_abs > limit:
            text += (f"; its values reach {bad.ref_max_abs:.3g}, past the f16 range ({limit:g}): "
                     "the layers reading it need f32 too (or let autocast_max_output_threshold "
                     "find them from calibration data)")
        return text

    def table(self, limit: int | None = None) -> str:
        """A fixed-width table, one row per layer."""
        head = (f"{'#':>4}  {'node':<28} {'op':<32} {'where':<7} {'dtype':<5} "
                f"{'rel_err':>9} {'cosine':>9} {'max_abs':>9} {'ref_max':>9}")
        rows = [head, "-" * len(head)]
        for e in self.layers[:limit] if limit else self.layers:
            mark = " <- first jump" if e is self.first_jump else ""
            mark += " <- worst" if e is self.worst else ""
            rows.append(f"{e.index:>4}  {e.node[:28]:<28} {e.op[:32]:<32} {e.where:<7} "
                        f"{e.dtype:<5} {e.rel_error:>9.2e} {e.cosine:>9.6f} "
                        f"{e.max_abs_error:>9.2e} {e.ref_max_abs:>9.2e}{mark}")
        return "\n".join(rows)

    def __str__(self) -> str:
        lines = [self.table()]
        for e in self.outputs:
            lines.append(f"output {e.node}: rel_err {e.rel_error:.2e}, cosine {e.cosine:.6f}, "
                         f"max_abs {e.max_abs_error:.2e}")
        if self.first_jump is not None:
            lines.append(f"first jump: {self.first_jump.node} ({self.first_jump.op}), "
                         f"rel_err {self.first_jump.rel_error:.2e}")
        if self.worst is not None:
            lines.append(f"worst: {self.worst.node} ({self.worst.op}), "
                         f"rel_err {self.worst.rel_error:.2e}")
        lines.append("suggestion: " + self.suggestion())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def clean(d):  # JSON has no inf/nan: write them as strings
            return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in d.items()}
        return {
            "layers": [clean(asdict(e)) for e in self.layers],
            "outputs": [clean(asdict(e)) for e in self.outputs],
            "first_jump": self.first_jump.node if self.first_jump else None,
            "worst": self.worst.node if self.worst else None,
            "suggestion": self.suggestion(),
        }

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def to_svg(self, path: str | None = None, width: int = 900, height: int = 320) -> str:
        """The relative error of every layer along the network (log scale) as an SVG picture:
        engine layers in orange, PyTorch ones in grey, the first jump and the worst marked.
        Returned as text; also written to `path` when given. No plotting library needed."""
        import html
        pad_l, pad_r, pad_t, pad_b = 60, 20, 20, 40
        pts = [(i, e) for i, e in enumerate(self.layers) if math.isfinite(e.rel_error)]
        floor = 1e-8
        logs = [math.log10(max(e.rel_error, floor)) for _, e in pts] or [0.0]
        lo, hi = math.floor(min(logs)), math.ceil(max(logs))
        hi = hi if hi > lo else lo + 1
        n = max(1, len(self.layers) - 1)

        def xy(i: int, err: float) -> tuple[float, float]:
            x = pad_l + (width - pad_l - pad_r) * i / n
            v = math.log10(max(err, floor))
            y = pad_t + (height - pad_t - pad_b) * (hi - v) / (hi - lo)
            return x, y

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'font-family="sans-serif" font-size="11">',
               f'<rect width="{width}" height="{height}" fill="white"/>']
        for d in range(lo, hi + 1):  # one grid line per decade
            _, y = xy(0, 10.0 ** d)
            out.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#ddd"/><text x="{pad_l - 6}" y="{y + 4:.1f}" '
                       f'text-anchor="end">1e{d}</text>')
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, e.rel_error) for i, e in pts))
        out.append(f'<polyline points="{line}" fill="none" stroke="#888" stroke-width="1"/>')
        for i, e in pts:
            x, y = xy(i, e.rel_error)
            color = "#e8710a" if e.where == "engine" else "#999"
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>'
                       f'{html.escape(e.node)} ({html.escape(e.op)}, {e.dtype}): rel_err '
                       f'{e.rel_error:.2e}</title></circle>')
        for mark, label in ((self.first_jump, "first jump"), (self.worst, "worst")):
            if mark is not None and math.isfinite(mark.rel_error) and mark in self.layers:
                x, y = xy(self.layers.index(mark), mark.rel_error)
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="none" stroke="red"/>'
                           f'<text x="{x + 8:.1f}" y="{y - 8:.1f}" fill="red">{label}: '
                           f'{html.escape(mark.node)}</text>')
        out.append(f'<text x="{width / 2:.0f}" y="{height - 10}" text-anchor="middle">layer '
                   f'(graph order; orange: engine, grey: PyTorch) / relative error vs f32</text>')
        out.append("</svg>")
        text = "\n".join(out)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text


class _Capture(torch.fx.Interpreter):
    """Runs a graph and keeps every tensor result by FX node name. In a compiled module, an
    engine call's results are named by the nodes they stand for (meta "ember_outputs") and a
    node copied from the model by meta "ember_source"."""

    def __init__(self, gm: torch.fx.GraphModule, compiled: bool = False):
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.compiled = compiled

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if not self.compiled:
            if isinstance(result, torch.Tensor):
                self.values[n.name] = result.detach()
            return result
        names = n.meta.get("ember_outputs")
        if names is not None:
            for name, t in zip(names, result):
                if name and isinstance(t, torch.Tensor):
                    self.values[name] = t.detach()
        elif n.meta.get("ember_source") and isinstance(result, torch.Tensor):
            self.values.setdefault(n.meta["ember_source"], result.detach())
        return result


def _errors(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float, float]:
    y = y.detach().to("cpu", torch.float64).reshape(-1)
    ref = ref.detach().to("cpu", torch.float64).reshape(-1)
    ref_max = float(ref.abs().max()) if ref.numel() else 0.0
    if not bool(torch.isfinite(y).all()) and bool(torch.isfinite(ref).all()):
        return math.inf, math.nan, math.inf, ref_max
    diff = y - ref
    finite = torch.isfinite(diff)
    diff = torch.where(finite, diff, torch.zeros_like(diff))
    norm_ref = float(ref.norm())
    rel = float(diff.norm()) / norm_ref if norm_ref > 0 else float(diff.norm())
    ny = float(y.norm())
    cos = float((y * ref).sum()) / (ny * norm_ref) if ny > 0 and norm_ref > 0 else math.nan
    return rel, cos, float(diff.abs().max()) if diff.numel() else 0.0, ref_max


def _op_text(node: torch.fx.Node) -> str:
    """"aten::convolution", or "aten::max_pool2d_with_indices[0]" for an output of a
    multi-output op."""
    import operator
    from ember._settings import op_key
    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        return f"{_op_text(node.args[0])}[{node.args[1]}]"
    if isinstance(node.target, torch._ops.OpOverload):
        return op_key(node.target)
    return str(node.target)


def _dtype_name(t: torch.dtype) -> str:
    from ember._importer import DTYPE_NAMES
    return DTYPE_NAMES.get(t, str(t))


def compare(model: torch.nn.Module | torch.export.ExportedProgram,
            compiled_or_settings: Any, inputs: Sequence[torch.Tensor]) -> AccuracyReport:
    """Per-layer accuracy of an Ember compilation against the model's FX graph run in f32.

    `compiled_or_settings`: a dict of CompileSettings fields, a CompileSettings, or a module
    returned by ember.compile / ember.dynamo.compile (its settings are reused). The engine
    side is a debug build of the same program: every layer's result is an engine output, so
    builder fusions across layers may differ from the real build. `inputs` are tensors."""
    from ember import dynamo
    from ember._importer import module_info
    from ember._settings import CompileSettings

    if not isinstance(inputs, (list, tuple)) or not inputs or not all(
            isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("ember.debug.compare: inputs must be a non-empty list or tuple of "
                        "tensors (the values to run both sides on)")
    if isinstance(compiled_or_settings, torch.fx.GraphModule):
        settings = getattr(compiled_or_settings, "ember_settings", None)
        if settings is None:
            raise TypeError("ember.debug.compare: this GraphModule was not made by ember.compile "
                            "(it has no ember_settings); pass the settings as a dict instead")
        settings = dataclasses_replace(settings)
    elif isinstance(compiled_or_settings, CompileSettings):
        settings = dataclasses_replace(compiled_or_settings)
    elif isinstance(compiled_or_settings, dict):
        settings = CompileSettings.from_kwargs(**compiled_or_settings)
    else:
        raise TypeError("ember.debug.compare: the second argument must be settings (a dict or "
                        "ember.CompileSettings) or a module from ember.compile, got "
                        f"{type(compiled_or_settings).__name__}")

    if isinstance(model, torch.export.ExportedProgram):
        ep = model
        ref_ep = model
    elif isinstance(model, torch.nn.Module):
        model = model.eval()
        ep = torch.export.export(model, tuple(inputs))
        # The reference runs in f32 whatever the model's dtype (a hand-.half() model included).
        ref_model = model
        if any(p.is_floating_point() and p.dtype != torch.float32
               for p in list(model.parameters()) + list(model.buffers())):
            ref_model = copy.deepcopy(model).float()
        ref_inputs = tuple(x.float() if x.is_floating_point() else x for x in inputs)
        same = ref_model is model and all(a is b for a, b in zip(ref_inputs, inputs))
        ref_ep = ep if same else torch.export.export(ref_model, ref_inputs)
    else:
        raise TypeError("ember.debug.compare: model must be an nn.Module or ExportedProgram, got "
                        f"{type(model).__name__}")

    # The reference: the same decomposition the compiler uses, run in f32 by PyTorch.
    ref_dec = ref_ep.run_decompositions(dynamo.decomposition_table())
    ref_gm = ref_dec.module()
    ref_cap = _Capture(ref_gm)
    ref_in = tuple(x.float() if x.is_floating_point() else x for x in inputs)
    with torch.no_grad():
        ref_out = ref_cap.run(*ref_in)

    fields = {f: getattr(settings, f) for f in settings.__dataclass_fields__}
    fields.pop("enabled_precisions", None)  # already folded into enable_autocast
    report_obj = dynamo.CompilationReport()
    gm = dynamo.compile(ep, list(inputs), report=report_obj, _debug_intermediates=True, **fields)
    engine_dtypes: dict[str, str] = {}
    for e in report_obj.engines:
        for io in e["outputs"]:
            # A node autocast lowered may leave its engine twice: as computed (f16) and as
            # the f32 copy a PyTorch reader or graph output needs. Report the computed one.
            if io["fx_name"] and engine_dtypes.get(io["fx_name"], "f32") == "f32":
                engine_dtypes[io["fx_name"]] = io["engine_dtype"]
    cap = _Capture(gm, compiled=True)
    with torch.no_grad():
        out = cap.run(*inputs)

    dec_nodes = {n.name: n for n in ref_gm.graph.nodes}
    report = AccuracyReport()
    for index, node in enumerate(ref_gm.graph.nodes):
        if node.op != "call_function" or node.name not in cap.values:
            continue
        ref = ref_cap.values.get(node.name)
        y = cap.values[node.name]
        if ref is None or not ref.is_floating_point() or y.shape != ref.shape:
            continue
        where = "engine" if node.name in engine_dtypes else "pytorch"
        dtype = engine_dtypes.get(node.name, _dtype_name(y.dtype))
        rel, cos, mabs, rmax = _errors(y, ref)
        op = _op_text(node)
        report.layers.append(LayerError(index, node.name, op, module_info(dec_nodes[node.name])[0],
                                        where, dtype, rel, cos, mabs, rmax))
    ref_flat = ref_out if isinstance(ref_out, (list, tuple)) else [ref_out]
    out_flat = out if isinstance(out, (list, tuple)) else [out]
    for i, (y, ref) in enumerate(zip(out_flat, ref_flat)):
        if isinstance(y, torch.Tensor) and isinstance(ref, torch.Tensor) and ref.is_floating_point():
            rel, cos, mabs, rmax = _errors(y, ref)
            report.outputs.append(LayerError(-1, f"output[{i}]", "output", "", "", _dtype_name(y.dtype),
                                             rel, cos, mabs, rmax))

    worst_so_far = 0.0
    for e in report.layers:
        floor = NOISE_FLOOR.get(e.dtype, NOISE_FLOOR["f32"])
        if report.first_jump is None and e.rel_error > floor and (
                e.rel_error >= JUMP_FACTOR * worst_so_far):
            report.first_jump = e
        worst_so_far = max(worst_so_far, e.rel_error)
        if report.worst is None or e.rel_error > report.worst.rel_error:
            report.worst = e
    return report


def dataclasses_replace(settings):
    """A copy of a CompileSettings (compare never changes the caller's)."""
    import dataclasses
    return dataclasses.replace(settings)

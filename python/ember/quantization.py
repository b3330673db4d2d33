"""Post-training quantization: ``ember.quantize(model, calibration_inputs, dtype=...)``.

Returns a ``torch.fx.GraphModule`` that still runs in PyTorch (fake quantization: each quantized
tensor goes through a quantize/dequantize pair) and that ``ember.compile`` turns into engines with
Quantize/Dequantize layers. The graph carries the same ops PT2E quantization produces
(``quantized_decomposed.quantize_per_tensor`` / ``dequantize_per_tensor`` for activations,
``dequantize_per_channel`` of int8 constants for weights), so both ways in end in the same engine
layers. FP8 uses Ember's own ``ember::quantize_fp8`` / ``ember::dequantize_fp8`` ops instead:
quantized_decomposed's float8 path rounds x / scale to an integer before the cast (its
``torch.round``), which throws away most of FP8's precision below 1.

What is quantized: the float inputs of convolutions, linear layers and matrix products (the ops
in QUANTIZED_OPS), activations per-tensor and symmetric (scale = threshold / 127 for int8,
threshold / 448 for FP8), weights per output channel for int8 (per-tensor for FP8) from their
own max |w|. The activation threshold comes from the calibration data:

- ``method="max"``: the largest |x| seen;
- ``method="percentile"``: the ``percentile``-th percentile of |x| (outliers clip);
- ``method="entropy"``: TensorRT's entropy calibration: the threshold whose 128-level
  quantized histogram is closest (KL divergence) to the measured histogram of |x|.

Grouped convolutions (depthwise ones: MobileNet, EfficientNet, ConvNeXt) stay in float unless
``include_grouped_convolutions=True``: the GPU back end's quantized GEMM and cuDNN paths take
groups = 1 only, and its direct kernel for the rest is far slower than its 16-bit depthwise
kernel (ConvNeXt-T INT8 at b32 on an H100: the 18 depthwise layers took 9.6 of 13.6 ms,
2026-12-07). Each one kept in float is logged at INFO.

Residual adds after a quantized int8 convolution (ResNet's shortcut: ``conv -> batch norm ->
add(., x)`` with x the block's input, which the next convolutions read quantized anyway) read x
through its quantize/dequantize pair too, as TensorRT's and PT2E's recipes quantize both inputs
of such an add (``quantize_residuals=False`` keeps them in float). The engine then reads the
shortcut as int8 inside the convolution's epilogue and writes the block's output as int8, with no
16-bit activation between blocks: ResNet-50's INT8 engine moves about half the bytes.

The thresholds can be saved and reused (``calibration_cache=path``, a JSON file keyed by the
graph, as TensorRT's calibration cache is): when the file exists and was made for the same graph,
dtype and method, calibration is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Iterable

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
import torch.fx

from ember._precision import _batches, _check_batch

logger = logging.getLogger("ember.quantization")

#: Ops whose float inputs (activation, weight) are quantized, with the index of the weight
#: argument (None: both operands are activations).
QUANTIZED_OPS: dict[str, int | None] = {
    "aten.linear.default": 1,
    "aten.conv1d.default": 1,
    "aten.conv2d.default": 1,
    "aten.conv3d.default": 1,
    "aten.convolution.default": 1,
    "aten.matmul.default": None,
    "aten.mm.default": None,
    "aten.bmm.default": None,
}

METHODS = ("max", "entropy", "percentile")
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
_CACHE_VERSION = 1
_HIST_BINS = 2048


# ---------------------------------------------------------------------------------------------
# Ember's FP8 ops: per-tensor, symmetric, x / scale rounded to the nearest E4M3 value.

_lib = torch.library.Library("ember", "FRAGMENT")
_lib.define("quantize_fp8(Tensor input, float scale) -> Tensor")
_lib.define("dequantize_fp8(Tensor input, float scale, ScalarType? out_dtype=None) -> Tensor")


@torch.library.impl(_lib, "quantize_fp8", "CompositeExplicitAutograd")
def _quantize_fp8(input: torch.Tensor, scale: float) -> torch.Tensor:
    # Saturate first: PyTorch's cast to float8_e4m3fn turns values beyond 448 into NaN.
    x = input.float() * (1.0 / scale)
    return x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


@torch.library.impl(_lib, "quantize_fp8", "Meta")
def _quantize_fp8_meta(input: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(input, dtype=torch.float8_e4m3fn)


@torch.library.impl(_lib, "dequantize_fp8", "CompositeExplicitAutograd")
def _dequantize_fp8(input: torch.Tensor, scale: float,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return (input.float() * scale).to(out_dtype or torch.float32)


@torch.library.impl(_lib, "dequantize_fp8", "Meta")
def _dequantize_fp8_meta(input: torch.Tensor, scale: float,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty_like(input, dtype=out_dtype or torch.float32)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_dtype(dtype: Any) -> torch.dtype:
    if dtype in (torch.int8, "int8", "i8"):
        return torch.int8
    if dtype in (torch.float8_e4m3fn, "fp8", "float8_e4m3fn", "f8e4m3"):
        return torch.float8_e4m3fn
    raise ValueError(f"ember.quantize: dtype {dtype!r} is not supported; use torch.int8 or "
                     "torch.float8_e4m3fn (float16/bfloat16 need no calibration: compile with "
                     "enable_autocast=True instead)")


def check_fp8_device(device: torch.device | None) -> None:
    """Raises when `device` is a GPU without FP8 tensor cores (compute capability below 8.9)."""
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"ember.quantize: dtype=torch.float8_e4m3fn needs a GPU with FP8 "
                         f"(compute capability 8.9 or newer: Ada, Hopper, Blackwell); {device} "
                         f"({name}) is sm_{major}{minor}; use dtype=torch.int8 there")


def _op_key(target: Any) -> str:
    return str(target)  # "aten.linear.default"


#: Where each convolution overload keeps its `groups` argument.
_GROUPS_ARG = {"aten.conv1d.default": 6, "aten.conv2d.default": 6, "aten.conv3d.default": 6,
               "aten.convolution.default": 8}


def _groups(n: torch.fx.Node) -> int:
    i = _GROUPS_ARG.get(_op_key(n.target))
    if i is None:
        return 1
    g = n.args[i] if i < len(n.args) else n.kwargs.get("groups", 1)
    return int(g) if isinstance(g, int) else 1


def _excluded_op_names(excluded_ops: Iterable) -> set[str]:
    names = set()
    for op in excluded_ops:
        if isinstance(op, torch._ops.OpOverloadPacket):
            names.update(f"{op}.{o}" for o in op.overloads())
        elif isinstance(op, (torch._ops.OpOverload, str)):
            s = str(op)
            if "::" in s:  # the schema spelling, "aten::linear" or "aten::linear.default"
                ns, rest = s.split("::", 1)
                names.add(f"{ns}.{rest}" if "." in rest else f"{ns}.{rest}.default")
            elif "." in s:  # "aten.linear.default"
                names.add(s)
            else:  # "linear"
                names.add(f"aten.{s}.default")
        else:
            raise TypeError(f"ember.quantize: excluded_ops holds ops (torch.ops.aten.linear, "
                            f"'aten.linear.default', 'linear'), got {type(op).__name__} {op!r}")
    return names


def _compile_patterns(excluded_nodes: Iterable) -> list[re.Pattern]:
    out = []
    for p in excluded_nodes:
        if not isinstance(p, str):
            raise TypeError("ember.quantize: excluded_nodes holds regular expressions (str) over "
                            f"node names, got {type(p).__name__} {p!r}")
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"ember.quantize: excluded_nodes: {p!r} is not a valid regular "
                             f"expression ({e})") from None
    return out


# ---------------------------------------------------------------------------------------------
# Calibration statistics


class _Observer(torch.fx.Interpreter):
    """Runs the graph and feeds the float results of the watched nodes to `sink`."""

    def __init__(self, gm: torch.fx.GraphModule, watched: set[str], sink):
        super().__init__(gm)
        self.watched = watched
        self.sink = sink

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.watched and isinstance(result, torch.Tensor) and \
                result.is_floating_point():
            self.sink(n.name, result.detach().float().abs().reshape(-1))
        return result


def _entropy_threshold(hist: torch.Tensor, amax: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the clipping threshold (a bin edge from `levels` bins on)
    whose quantization into `levels` levels loses the least information (KL divergence between
    the clipped reference distribution and its quantized form)."""
    hist = hist.double()
    bins = hist.numel()
    if amax <= 0 or hist.sum() == 0:
        return amax
    best, best_i = math.inf, bins
    width = amax / bins
    for i in range(levels, bins + 1, 16):
        ref = hist[:i].clone()
        ref[i - 1] += hist[i:].sum()  # outliers clip into the last bin
        # Quantize the first i bins into `levels` groups, spreading each group's mass evenly
        # over its nonzero bins.
        edges = torch.linspace(0, i, levels + 1).round().long()
        q = torch.zeros(i, dtype=torch.float64)
        src = hist[:i]
        for k in range(levels):
            a, b = int(edges[k]), int(edges[k + 1])
            if b <= a:
                continue
            seg = src[a:b]
            nz = seg > 0
            count = int(nz.sum())
            if count:
                q[a:b][nz] = seg.sum() / count
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        mask = p > 0
        # Bins where p > 0 but q == 0 make the divergence infinite: smooth them.
        qm = torch.where(q[mask] > 0, q[mask], torch.full_like(q[mask], 1e-12))
        kl = float((p[mask] * torch.log(p[mask] / qm)).sum())
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * width


def _thresholds(gm: torch.fx.GraphModule, watched: set[str], batches: list[tuple],
                method: str, percentile: float) -> dict[str, float]:
    """Per watched node, the clipping threshold of |x| over the calibration batches."""
    amax: dict[str, float] = {}

    def take_max(name, a):
        if a.numel():
            amax[name] = max(amax.get(name, 0.0), float(a.max()))

    with torch.no_grad():
        for b in batches:
            _Observer(gm, watched, take_max).run(*b)
    if method == "max":
        return amax
    hists: dict[str, torch.Tensor] = {}

    def take_hist(name, a):
        top = amax.get(name, 0.0)
        if top <= 0 or not a.numel():
            return
        h = torch.histc(a, bins=_HIST_BINS, min=0.0, max=top)
        hists[name] = hists[name] + h if name in hists else h

    with torch.no_grad():
        for b in batches:
            _Observer(gm, watched, take_hist).run(*b)
    out = {}
    for name, top in amax.items():
        h = hists.get(name)
        if h is None:
            out[name] = top
        elif method == "percentile":
            cdf = torch.cumsum(h.double(), 0) / h.sum()
            idx = int(torch.searchsorted(cdf, percentile / 100.0))
            out[name] = min(top, (idx + 1) * top / _HIST_BINS)
        else:
            out[name] = _entropy_threshold(h, top)
    return out


# ---------------------------------------------------------------------------------------------
# Calibration cache


def _fingerprint(gm: torch.fx.GraphModule, watched: list[str]) -> str:
    """A hash of the graph's structure (node names, ops, shapes) and the watched tensors."""
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        shape = list(val.shape) if isinstance(val, torch.Tensor) else None
        h.update(f"{n.op}|{n.name}|{n.target}|{shape}\n".encode())
    h.update(",".join(sorted(watched)).encode())
    return h.hexdigest()[:32]


def _read_cache(path: str, key: dict) -> dict[str, float] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("ember.quantize: calibration cache %s is unreadable (%s); calibrating "
                       "again and rewriting it", path, e)
        return None
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or \
            not isinstance(data.get("thresholds"), dict):
        logger.warning("ember.quantize: calibration cache %s is not an Ember calibration cache "
                       "of version %d; calibrating again and rewriting it", path, _CACHE_VERSION)
        return None
    for k, v in key.items():
        if data.get(k) != v:
            logger.warning("ember.quantize: calibration cache %s was made for another %s (%r, "
                           "now %r); calibrating again and rewriting it", path, k, data.get(k), v)
            return None
    return {str(k): float(v) for k, v in data["thresholds"].items()}


def _write_cache(path: str, key: dict, thresholds: dict[str, float]) -> None:
    data = dict(key, version=_CACHE_VERSION, thresholds=thresholds)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Graph rewriting


def _f32(x: float) -> float:
    """`x` rounded to the nearest f32: engines hold scales in f32, and PyTorch's 1 / scale of an
    f32-exact scale is then the engine's (bit-identical quantization)."""
    return float(torch.tensor(x, dtype=torch.float32))


def _get_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _quantize_weight(gm: torch.fx.GraphModule, node: torch.fx.Node, w: torch.Tensor,
                     dtype: torch.dtype, consumer: torch.fx.Node, name: str,
                     fp8_amax: float | None = None) -> torch.fx.Node:
    """An int8 (per output channel) or FP8 (per tensor) constant of `w` and its dequantize.
    `fp8_amax`: the magnitude an FP8 scale covers (shared by sibling products), else w's."""
    graph = gm.graph
    out_dtype = w.dtype  # a half model's weights dequantize to half (its bias is half too)
    w = w.detach().float()
    if dtype == torch.int8:
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).float()
        view = [-1] + [1] * (w.dim() - 1)
        q = torch.clamp(torch.round(w * (1.0 / scales.view(view))), -127, 127).to(torch.int8)
        gm.register_buffer(f"{name}_q", q)
        gm.register_buffer(f"{name}_scale", scales)
        gm.register_buffer(f"{name}_zero_point", torch.zeros_like(scales, dtype=torch.int64))
        with graph.inserting_before(consumer):
            qn = graph.get_attr(f"{name}_q")
            sn = graph.get_attr(f"{name}_scale")
            zn = graph.get_attr(f"{name}_zero_point")
            return graph.call_function(
                torch.ops.quantized_decomposed.dequantize_per_channel.default,
                (qn, sn, zn, 0, -127, 127, torch.int8), {"out_dtype": out_dtype})
    amax = float(w.abs().max()) if fp8_amax is None else fp8_amax
    scale = _f32(amax / 448.0) if amax > 0 else 1.0
    gm.register_buffer(f"{name}_q", torch.ops.ember.quantize_fp8(w, scale))
    with graph.inserting_before(consumer):
        qn = graph.get_attr(f"{name}_q")
        return graph.call_function(torch.ops.ember.dequantize_fp8.default,
                                   (qn, scale, out_dtype))


def _fake_quantize(graph: torch.fx.Graph, x: torch.fx.Node, scale: float, dtype: torch.dtype,
                   consumer: torch.fx.Node) -> torch.fx.Node:
    """x -> quantize -> dequantize, back to x's own float dtype (f16 in a half model)."""
    out_dtype = x.meta["val"].dtype
    with graph.inserting_before(consumer):
        if dtype == torch.int8:
            args = (scale, 0, -127, 127, torch.int8)
            q = graph.call_function(torch.ops.quantized_decomposed.quantize_per_tensor.default,
                                    (x, *args))
            return graph.call_function(
                torch.ops.quantized_decomposed.dequantize_per_tensor.default, (q, *args),
                {"out_dtype": out_dtype})
        q = graph.call_function(torch.ops.ember.quantize_fp8.default, (x, scale))
        return graph.call_function(torch.ops.ember.dequantize_fp8.default, (q, scale, out_dtype))


_CONV_OPS = {"aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
             "aten.convolution.default"}


def _source_conv(n: Any, convs: set) -> bool:
    """Whether `n` is a quantized convolution's output, directly or through its batch norm
    (export's batch_norm op and the getitem of its result)."""
    for _ in range(3):
        if not isinstance(n, torch.fx.Node) or n.op != "call_function":
            return False
        if n in convs:
            return True
        name = _op_key(n.target)
        if "batch_norm" not in name and "getitem" not in name:
            return False
        n = n.args[0]
    return False


def _route_residuals(graph: torch.fx.Graph, dq_of: dict, convs: set) -> int:
    """Makes each add (aten.add.Tensor or add_) of a quantized convolution's output and a tensor
    that has a fake-quantize pair (dq_of) read that pair's dequantized value; returns how
    many."""
    routed = 0
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in list(graph.nodes):
        # export keeps torchvision's `out += identity` as add_ (on a temporary: the
        # convolution's output, so reading the shortcut through the pair changes nothing else).
        if n.op != "call_function" or len(n.args) < 2 or \
                _op_key(n.target) not in ("aten.add.Tensor", "aten.add_.Tensor"):
            continue
        a, b = n.args[0], n.args[1]
        for i, (x, other) in enumerate(((a, b), (b, a))):
            if i == 0 and _op_key(n.target) == "aten.add_.Tensor":
                continue  # add_ writes its first argument: that one stays the tensor itself
            # The pair sits before x's first quantized reader; an add before that keeps x.
            if isinstance(x, torch.fx.Node) and x.name in dq_of and \
                    order[dq_of[x.name]] < order[n] and _source_conv(other, convs):
                n.update_arg(i, dq_of[x.name])
                routed += 1
                break
    return routed


def _prepare(model: Any, example: tuple) -> torch.fx.GraphModule:
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if isinstance(model, torch.fx.GraphModule) and any(
            n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
            for n in model.graph.nodes):
        return model  # already an aten-level graph (an earlier export)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"ember.quantize: model must be a torch.nn.Module or a "
                        f"torch.export.ExportedProgram, got {type(model).__name__}")
    return torch.export.export(model.eval(), example).module()


def quantize(model: Any, calibration_inputs: Iterable, dtype: Any = torch.int8,
             method: str = "max", *, percentile: float = 99.99,
             excluded_ops: Iterable = (), excluded_nodes: Iterable = (),
             calibration_cache: str | os.PathLike | None = None,
             include_grouped_convolutions: bool = False,
             quantize_residuals: bool = True) -> torch.fx.GraphModule:
    """Post-training quantization of `model` for Ember engines (module doc).

    model: an nn.Module (exported with torch.export on the first calibration batch) or an
        ExportedProgram.
    calibration_inputs: an iterable of batches (tensors or tuples of tensors), all with the
        shapes of the first; at least one batch.
    dtype: torch.int8 or torch.float8_e4m3fn (FP8 engines need compute capability 8.9+).
    method: "max", "entropy" or "percentile" (with `percentile`, in (0, 100]).
    excluded_ops / excluded_nodes: ops (torch.ops.aten.linear, "aten.conv2d.default",
        "linear") and regular expressions over node names whose inputs stay in float.
    calibration_cache: a file path; thresholds are read from it when it matches this graph,
        dtype and method, else measured and written to it.
    include_grouped_convolutions: quantize convolutions with groups > 1 too (by default they
        stay in float, which is faster on the GPU today; module doc).
    quantize_residuals: int8 only: a residual add after a quantized convolution reads its other
        input (when that is quantized for another consumer) through the quantize/dequantize
        pair as well (module doc); False keeps it in float.

    Returns a torch.fx.GraphModule that runs in PyTorch (fake quantization) and compiles with
    ember.compile(..., inputs=...) into engines with Quantize/Dequantize layers.
    """
    dtype = _check_dtype(dtype)
    if method not in METHODS:
        raise ValueError(f"ember.quantize: method {method!r} is not one of {', '.join(METHODS)}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or \
            not 0 < percentile <= 100:
        raise ValueError(f"ember.quantize: percentile must be in (0, 100], got {percentile!r}")
    if isinstance(calibration_inputs, torch.Tensor) or not isinstance(calibration_inputs,
                                                                      Iterable):
        raise TypeError("ember.quantize: calibration_inputs must be an iterable of batches (a "
                        "list of input tuples such as [(x1,), (x2,)], or a DataLoader), got "
                        f"{type(calibration_inputs).__name__}")
    raw = list(calibration_inputs)
    if not raw:
        raise ValueError("ember.quantize: calibration_inputs is empty; give at least one batch of "
                         "representative inputs (the thresholds come from them)")
    first = raw[0] if isinstance(raw[0], (tuple, list)) else (raw[0],)
    if dtype == torch.float8_e4m3fn:
        devices = [x.device for x in first if isinstance(x, torch.Tensor)]
        if isinstance(model, torch.nn.Module):
            devices += [p.device for p in model.parameters()][:1]
        for d in devices:
            check_fp8_device(d)
    if not isinstance(quantize_residuals, bool):
        raise TypeError("ember.quantize: quantize_residuals must be True or False, got "
                        f"{type(quantize_residuals).__name__} {quantize_residuals!r}")
    if not isinstance(include_grouped_convolutions, bool):
        raise TypeError("ember.quantize: include_grouped_convolutions must be True or False, got "
                        f"{type(include_grouped_convolutions).__name__} "
                        f"{include_grouped_convolutions!r}")
    patterns = _compile_patterns(excluded_nodes)
    skip_ops = _excluded_op_names(excluded_ops)

    gm = _prepare(model, tuple(first))
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    batches = _batches(raw, len(placeholders), "calibration_inputs")
    for i, b in enumerate(batches):
        _check_batch(b, placeholders, i, "calibration_inputs")

    # The edges to quantize: (consumer, argument index, producer), weights apart.
    activations: list[tuple[torch.fx.Node, int, torch.fx.Node]] = []
    weights: list[tuple[torch.fx.Node, int, torch.fx.Node]] = []
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        key = _op_key(n.target)
        if key not in QUANTIZED_OPS:
            continue
        if key in skip_ops or any(p.search(n.name) for p in patterns):
            logger.info("ember.quantize: %s (%s) stays in float (excluded)", n.name, key)
            continue
        if not include_grouped_convolutions and _groups(n) > 1:
            logger.info("ember.quantize: %s (%s, groups = %d) stays in float: grouped "
                        "convolutions run faster in 16 bits than in Ember's quantized direct "
                        "kernel (include_grouped_convolutions=True quantizes them)", n.name, key,
                        _groups(n))
            continue
        widx = QUANTIZED_OPS[key]
        for i in range(2):
            a = n.args[i] if i < len(n.args) else None
            if not isinstance(a, torch.fx.Node):
                continue
            val = a.meta.get("val")
            if not isinstance(val, torch.Tensor) or not val.is_floating_point():
                continue
            if i == widx and a.op == "get_attr":
                weights.append((n, i, a))
            else:
                activations.append((n, i, a))
    if not activations and not weights:
        logger.warning("ember.quantize: the model has no %s to quantize (or all are excluded); "
                       "it is returned unchanged", "/".join(sorted(QUANTIZED_OPS)))
        return gm

    watched = sorted({a.name for _, _, a in activations})
    key = {"graph": _fingerprint(gm, watched), "dtype": str(dtype), "method": method,
           "percentile": float(percentile) if method == "percentile" else None}
    thresholds = None
    if calibration_cache is not None:
        thresholds = _read_cache(os.fspath(calibration_cache), key)
        if thresholds is not None and set(thresholds) != set(watched):
            thresholds = None
        if thresholds is not None:
            logger.info("ember.quantize: thresholds from calibration cache %s", calibration_cache)
    if thresholds is None:
        thresholds = _thresholds(gm, set(watched), batches, method, float(percentile))
        for name in watched:
            thresholds.setdefault(name, 0.0)
        if calibration_cache is not None:
            _write_cache(os.fspath(calibration_cache), key, thresholds)

    qmax = _QMAX[dtype]
    for name, t in thresholds.items():
        if not math.isfinite(t):
            raise ValueError(f"ember.quantize: the calibration data gives node '{name}' a "
                             f"non-finite magnitude ({t}); check the calibration inputs or "
                             "exclude the node (excluded_nodes)")
    # One fake-quantize per (producer) tensor, shared by its quantized consumers.
    dq_of: dict[str, torch.fx.Node] = {}
    for consumer, i, a in activations:
        if a.name not in dq_of:
            t = thresholds[a.name]
            scale = _f32(t / qmax) if t > 0 else 1.0
            first_user = min((u for u, _, p in activations if p is a),
                             key=lambda u: list(graph.nodes).index(u))
            dq_of[a.name] = _fake_quantize(graph, a, scale, dtype, first_user)
        consumer.update_arg(i, dq_of[a.name])
    if quantize_residuals and dtype == torch.int8:
        quantized_convs = {c for c, _, _ in activations if _op_key(c.target) in _CONV_OPS}
        residuals = _route_residuals(graph, dq_of, quantized_convs)
        if residuals:
            logger.info("ember.quantize: %d residual adds read their shortcut quantized "
                        "(quantize_residuals)", residuals)
    # FP8 weights of products that read the same activation (an attention's q, k and v
    # projections) share one per-tensor scale, the largest: the builder can then run them as
    # one GEMM (its FP8 GEMM takes one weight scale). E4M3's exponent keeps each weight's
    # relative precision under a larger scale; only values below its normal range (2^-6 of the
    # scale) lose bits. Int8 weights are per channel and merge without this.
    fp8_amax: dict[str, float] = {}
    if dtype == torch.float8_e4m3fn:
        groups: dict[str, list[torch.fx.Node]] = {}
        for consumer, i, w in weights:
            source = consumer.args[0]
            if _op_key(consumer.target) == "aten.linear.default" and i == 1 and \
                    isinstance(source, torch.fx.Node):
                groups.setdefault(source.name, []).append(w)
        for members in groups.values():
            if len(members) < 2:
                continue
            top = max(float(_get_attr(gm, w.target).detach().float().abs().max())
                      for w in members)
            for w in members:
                fp8_amax[w.name] = top
    for consumer, i, w in weights:
        name = f"_ember_q_{consumer.name}_w"
        dq = _quantize_weight(gm, w, _get_attr(gm, w.target), dtype, consumer, name,
                              fp8_amax.get(w.name))
        consumer.update_arg(i, dq)
    for _, _, w in weights:  # the float weights nothing reads any more
        if w.graph is graph and not w.users:
            graph.erase_node(w)
    graph.lint()
    # A plain GraphModule: the one ExportedProgram.module() returns refuses .eval(), which
    # ember.compile and users call.
    gm = torch.fx.GraphModule(gm, graph, class_name="EmberQuantized")
    logger.info("ember.quantize: %d activation tensors and %d weights quantized to %s (%s)",
                len(dq_of), len(weights), dtype, method)
    return gm

"""Precision settings: autocast (Torch-TensorRT's names and meaning), the deprecated spellings
that map onto it, and calibration (per-node max |x| measured in f32 on sample inputs).

The rules themselves live in C++ (src/compiler/lowering/passes/autocast.cpp, table:
`ember._C.autocast_rules()`); this module validates settings and measures magnitudes.
docs/precision.md describes both.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from typing import Any, Iterable

import torch
import torch.fx

logger = logging.getLogger("ember")

#: Spellings of the low-precision types autocast accepts.
LOW_PRECISION_TYPES = {
    torch.float16: "f16", "f16": "f16", "fp16": "f16", "float16": "f16", "half": "f16",
    torch.bfloat16: "bf16", "bf16": "bf16", "bfloat16": "bf16",
}

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """A deprecation warning once per process per spelling (and on the ember logger)."""
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(message)
    warnings.warn(message, FutureWarning, stacklevel=4)


def _precision_name(p: Any) -> str:
    if isinstance(p, torch.dtype):
        return str(p).replace("torch.", "")
    return str(p)


def resolve(settings) -> None:
    """Validates the precision fields of a CompileSettings and maps the deprecated spellings
    (enabled_precisions={torch.half}, use_explicit_typing=False) onto enable_autocast.
    Idempotent: validate() may run more than once."""
    s = settings
    for name in ("enable_autocast", "use_fp32_acc", "use_explicit_typing"):
        if not isinstance(getattr(s, name), bool):
            raise TypeError(f"ember: {name} must be True or False, got "
                            f"{type(getattr(s, name)).__name__} {getattr(s, name)!r}")
    precisions = s.enabled_precisions
    if isinstance(precisions, (torch.dtype, str)):
        precisions = {precisions}
    if not isinstance(precisions, Iterable):
        raise TypeError("ember: enabled_precisions must be a set of dtypes such as "
                        f"{{torch.half}}, got {type(precisions).__name__}")
    low = set()
    for p in precisions:
        if p in (torch.float32, "f32", "fp32", "float32", "float"):
            continue
        if p in LOW_PRECISION_TYPES:
            low.add(LOW_PRECISION_TYPES[p])
            continue
        if p in (torch.int8, torch.float8_e4m3fn, "int8", "i8", "fp8"):
            raise ValueError(f"ember: enabled_precisions={{{_precision_name(p)}}}: INT8 and FP8 "
                             "engines come from a quantized model, not from a setting: "
                             "qmodel = ember.quantize(model, calibration_inputs, "
                             "dtype=torch.int8 or torch.float8_e4m3fn) (or a PT2E-quantized "
                             "program), then ember.compile(qmodel, ...) (docs/precision.md)")
        raise ValueError(f"ember: enabled_precisions: unsupported precision "
                         f"{_precision_name(p)!r}; supported: torch.float32, torch.float16, "
                         "torch.bfloat16")
    if len(low) > 1:
        raise ValueError("ember: enabled_precisions names both float16 and bfloat16; autocast "
                         "runs one low-precision type: pick one with "
                         "autocast_low_precision_type")
    if low:
        kind = low.pop()
        _warn_once("enabled_precisions",
                   f"ember: enabled_precisions is deprecated; it now means enable_autocast=True, "
                   f"autocast_low_precision_type=torch.{'float16' if kind == 'f16' else 'bfloat16'}"
                   " (f32 nodes run in low precision except where the autocast rules keep f32)")
        if s.autocast_low_precision_type is None:
            s.autocast_low_precision_type = torch.float16 if kind == "f16" else torch.bfloat16
        s.enable_autocast = True
        s.enabled_precisions = ()
    if not s.use_explicit_typing:
        _warn_once("use_explicit_typing",
                   "ember: use_explicit_typing=False is deprecated; it now means "
                   "enable_autocast=True (f16 unless autocast_low_precision_type says otherwise)")
        s.enable_autocast = True
        s.use_explicit_typing = True

    t = s.autocast_low_precision_type
    if t is not None and t not in LOW_PRECISION_TYPES:
        raise ValueError(f"ember: autocast_low_precision_type must be torch.float16 or "
                         f"torch.bfloat16, got {t!r}")
    for name in ("autocast_excluded_nodes", "autocast_excluded_ops"):
        value = getattr(s, name)
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise TypeError(f"ember: {name} must be a set or list (of "
                            f"{'regular expressions' if name.endswith('nodes') else 'ops'}), got "
                            f"{type(value).__name__} {value!r}")
    for pattern in s.autocast_excluded_nodes:
        if not isinstance(pattern, str):
            raise TypeError("ember: autocast_excluded_nodes holds regular expressions (str), got "
                            f"{type(pattern).__name__} {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"ember: autocast_excluded_nodes: {pattern!r} is not a valid "
                             f"regular expression ({e})") from None
    th = s.autocast_max_output_threshold
    if isinstance(th, bool) or not isinstance(th, (int, float)) or math.isnan(th) or th < 0:
        raise ValueError("ember: autocast_max_output_threshold must be a number >= 0, got "
                         f"{th!r}")
    depth = s.autocast_max_depth_of_reduction
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError("ember: autocast_max_depth_of_reduction must be None or an int >= 1, "
                         f"got {depth!r}")
    data = s.autocast_calibration_dataloader
    if data is not None and (isinstance(data, torch.Tensor) or not isinstance(data, Iterable)):
        raise TypeError("ember: autocast_calibration_dataloader must be an iterable of batches "
                        "(a torch DataLoader, or a list of input tuples such as [(x1,), (x2,)]), "
                        f"got {type(data).__name__}")


def compiler_settings(settings) -> dict:
    """The precision keys of CompileSettings.to_compiler()."""
    from ember._settings import _op_name
    s = settings
    low = s.autocast_low_precision_type
    return {
        "enable_autocast": bool(s.enable_autocast),
        "autocast_low_precision_type": LOW_PRECISION_TYPES[low] if low is not None else "f16",
        "autocast_excluded_nodes": [str(p) for p in s.autocast_excluded_nodes],
        "autocast_excluded_ops": [_op_name(o) for o in s.autocast_excluded_ops],
        "autocast_max_output_threshold": float(s.autocast_max_output_threshold),
        "autocast_max_depth_of_reduction": (-1 if s.autocast_max_depth_of_reduction is None
                                            else int(s.autocast_max_depth_of_reduction)),
        "use_fp32_acc": bool(s.use_fp32_acc),
    }


# ---------------------------------------------------------------------------------------------
# Calibration

class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps, per node name, the largest |x| of its float tensor result."""

    def __init__(self, gm: torch.fx.GraphModule, out: dict[str, float]):
        super().__init__(gm)
        self.out = out

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.is_floating_point() and result.numel():
            m = float(result.detach().abs().max())
            if math.isnan(m):
                m = math.inf
            self.out[n.name] = max(self.out.get(n.name, 0.0), m)
        return result


def _batches(data: Any, n_inputs: int, where: str) -> list[tuple]:
    out = []
    for i, batch in enumerate(data):
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        elif isinstance(batch, dict):
            raise TypeError(f"ember: {where} batch {i} is a dict; give positional inputs as a "
                            "tuple (x1, x2, ...)")
        elif not isinstance(batch, (list, tuple)):
            raise TypeError(f"ember: {where} batch {i} is a {type(batch).__name__}; each batch "
                            "must be a tensor or a tuple of tensors")
        batch = tuple(batch)
        if len(batch) != n_inputs:
            raise ValueError(f"ember: {where} batch {i} has {len(batch)} inputs, the program "
                             f"takes {n_inputs}")
        out.append(batch)
    if not out:
        raise ValueError(f"ember: {where} yielded no batches; give at least one batch of sample "
                         "inputs (or leave it None to measure on the compile inputs)")
    return out


def _check_batch(batch: tuple, placeholders: list, i: int, where: str) -> None:
    for k, (x, ph) in enumerate(zip(batch, placeholders)):
        val = ph.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ember: {where} batch {i} input {k} ('{ph.name}') is a "
                            f"{type(x).__name__}, expected a tensor")
        if x.dtype != val.dtype:
            raise ValueError(f"ember: {where} batch {i} input {k} ('{ph.name}') has dtype "
                             f"{x.dtype}, the program expects {val.dtype}")
        want = list(val.shape)
        ok = len(want) == x.dim() and all(
            not isinstance(w, int) or w == s for w, s in zip(want, x.shape))
        if not ok:
            shape = "[" + ", ".join(str(w) for w in want) + "]"
            raise ValueError(f"ember: {where} batch {i} input {k} ('{ph.name}') has shape "
                             f"{list(x.shape)}, the program expects {shape}")


def measure_magnitudes(ep: torch.export.ExportedProgram, user_inputs: list[str],
                       data: Any, where: str = "autocast_calibration_dataloader"
                       ) -> dict[str, float]:
    """Max |x| of every float node of `ep`'s graph (already decomposed, so names match the IR)
    over the batches of `data`, run in f32 (the program's own dtypes) with PyTorch."""
    gm = ep.graph_module
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    by_name = {n.name: n for n in placeholders}
    user = [by_name[name] for name in user_inputs]
    batches = _batches(data, len(user), where)
    sig = ep.graph_signature
    lifted = {}
    for spec in sig.input_specs:
        if spec.target is None:
            continue
        t = ep.state_dict.get(spec.target)
        if t is None:
            t = ep.constants.get(spec.target)
        lifted[spec.arg.name] = t
    out: dict[str, float] = {}
    rec = _Recorder(gm, out)
    device = next((t.device for t in lifted.values() if isinstance(t, torch.Tensor)), None)
    with torch.no_grad():
        for i, batch in enumerate(batches):
            _check_batch(batch, user, i, where)
            feed = dict(zip(user_inputs, batch))
            args = []
            for ph in placeholders:
                if ph.name in feed:
                    x = feed[ph.name]
                    args.append(x.to(device) if device is not None else x)
                else:
                    args.append(lifted.get(ph.name))
            rec.run(*args)
    return out


def calibrate(ep: torch.export.ExportedProgram, user_inputs: list[str], settings,
              inputs: Any) -> dict[str, float]:
    """Magnitudes for the threshold rule: from the calibration data, else from the compile's
    example tensors (one batch), else none (the rule then judges nothing)."""
    data = settings.autocast_calibration_dataloader
    if data is not None:
        return measure_magnitudes(ep, user_inputs, data)
    if inputs and all(isinstance(x, torch.Tensor) for x in inputs):
        return measure_magnitudes(ep, user_inputs, [tuple(inputs)], "the compile inputs")
    logger.info("ember: autocast has no sample inputs (inputs are ember.Input specs and no "
                "autocast_calibration_dataloader was given): autocast_max_output_threshold "
                "judges nothing")
    return {}

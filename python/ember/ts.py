"""The TorchScript path: a torch.jit.ScriptModule in, a ScriptModule out (C++ core).

    scripted = torch.jit.script(model.eval())
    compiled = ember.ts.compile(scripted, inputs=[ember.Input(shape=(1, 3, 224, 224))])
    torch.jit.save(compiled, "model_ember.ts")   # loads in C++ with libtorch + libember_torch.so

The work happens in C++ (src/torch/torchscript/, libember_torch.so): TorchScript lowering,
import into the compiler IR, the compiler's lowering, partitioning and engine builds, and a new
module whose forward calls ``ember::execute_engine`` per engine and keeps the rest as
TorchScript. The module crosses into C++ as a file (torch.jit.save into a temporary directory),
so the native library needs no Python bindings of its own. The C++ compilation runs in stages
(torch.classes.ember.TSCompilation) so that each engine segment is built or loaded through the
engine cache here, with the key and the loop every path shares (engine_cache.cached_build).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from typing import Any, Sequence

import torch

from ember import _progress, _runtime, _timing_cache, engine_cache
from ember._importer import DTYPE_NAMES
from ember._input import Input
from ember._settings import CompileSettings

__all__ = ["compile", "check_method_op_support", "convert_method_to_engine",
           "embed_engine_in_new_module", "input_spec", "script_or_trace", "TSCompileReport"]

_log = logging.getLogger("ember")
_build_log = logging.getLogger("ember.build")


class TSCompileReport:
    """What ember.ts.compile did (also on the result as `ember_report`). `engines`: one dict per
    engine (segment index, nodes, plan_bytes, build_seconds, cached, key), as in the dynamo
    path's report."""

    def __init__(self, lines: Sequence[str], engines: Sequence[dict] = ()):
        self.num_engines = 0
        self.partition_report = ""
        self.fallback: list[str] = []
        self.log: list[str] = []
        self.engines = list(engines)
        for line in lines:
            key, _, value = line.partition("=")
            if key == "engines":
                self.num_engines = int(value)
            elif key == "report":
                self.partition_report = value
            elif key == "fallback":
                self.fallback.append(value)
            elif key == "log":
                self.log.append(value)

    def __str__(self) -> str:
        hits = sum(bool(e.get("cached")) for e in self.engines)
        lines = [self.partition_report.rstrip(), f"{self.num_engines} engine(s)" +
                 (f" ({hits} from the engine cache)" if hits else "")]
        if self.fallback:
            lines.append("Runs in TorchScript:")
            lines += [f"  {f}" for f in self.fallback]
        return "\n".join(lines)


def input_spec(x: Any, index: int = 0) -> str:
    """An ember.Input or tensor as the C++ input form "[(min);(opt);(max)]@dtype"."""
    if isinstance(x, torch.Tensor):
        x = Input.from_tensor(x)
    if not isinstance(x, Input):
        raise TypeError(f"ember.ts: input {index} must be a torch.Tensor or ember.Input, "
                        f"got {type(x).__name__}")
    if x.dtype not in DTYPE_NAMES:
        raise TypeError(f"ember.ts: input {index} has dtype {x.dtype}, which engines do not take")

    def shape(s):
        return "(" + ",".join(str(int(d)) for d in s) + ")"

    body = shape(x.opt_shape) if not x.is_dynamic() else (
        f"[{shape(x.min_shape)};{shape(x.opt_shape)};{shape(x.max_shape)}]")
    return f"{body}@{DTYPE_NAMES[x.dtype]}"


def _settings_items(settings: CompileSettings, csettings: dict | None = None) -> list[str]:
    """The C++ settings (key=value): the compiler's, then the TorchScript path's own."""
    items = []
    csettings = csettings if csettings is not None else settings.to_compiler()
    own = {"use_global_partitioner": settings.use_global_partitioner,
           "cuda_graphs": settings.cuda_graphs}
    for key, value in [*csettings.items(), *own.items()]:
        if isinstance(value, (list, tuple)):
            items += [f"{key}={v}" for v in value]
        elif isinstance(value, bool):
            items.append(f"{key}={'true' if value else 'false'}")
        else:
            items.append(f"{key}={value}")
    return items


def _unwrap_error(e: RuntimeError) -> RuntimeError:
    # The op's message is the C++ compiler's; drop the dispatcher's prefix lines.
    return RuntimeError(str(e).strip())


def _as_script_module(module: Any) -> torch.jit.ScriptModule:
    if isinstance(module, torch.jit.ScriptModule):
        return module
    raise TypeError("ember.ts: expected a torch.jit.ScriptModule (torch.jit.script or "
                    "torch.jit.trace), got " + type(module).__name__ +
                    "; ember.compile(module, ir='ts', inputs=...) scripts or traces an nn.Module")


def _with_file(module: torch.jit.ScriptModule, fn):
    _runtime.load_library()
    with tempfile.TemporaryDirectory(prefix="ember-ts-") as tmp:
        path = os.path.join(tmp, "in.ts")
        torch.jit.save(module, path)
        return fn(tmp, path)


def compile(module: torch.jit.ScriptModule, inputs: Sequence[Any] | None = None, *,
            method_name: str = "forward", **kwargs) -> torch.jit.ScriptModule:
    """Compiles a ScriptModule's method: engine segments become ``ember::execute_engine`` calls,
    everything else (control flow, unsupported ops) stays TorchScript. `inputs`: one tensor or
    ember.Input per method input (ranges make dynamic dims). Keyword arguments are
    CompileSettings fields. The result saves with torch.jit.save."""
    module = _as_script_module(module)
    settings = CompileSettings.from_kwargs(**kwargs)
    if not inputs:
        raise ValueError("ember.ts.compile: inputs= is required (tensors or ember.Input specs)")
    specs = [input_spec(x, i) for i, x in enumerate(inputs)]
    csettings = settings.to_compiler()
    items = _settings_items(settings, csettings)
    if settings.dryrun:
        raise ValueError("ember.ts.compile: dryrun is not supported on the TorchScript path; use "
                         "ember.ts.check_method_op_support or debug=True")

    def run(tmp, path):
        out = os.path.join(tmp, "out.ts")
        try:
            c = torch.classes.ember.TSCompilation(path, method_name, specs, items)
        except RuntimeError as e:
            raise _unwrap_error(e) from None
        engines = _build_engines(c, settings, csettings)
        try:
            lines = c.finish(out)
        except RuntimeError as e:
            raise _unwrap_error(e) from None
        return torch.jit.load(out), TSCompileReport(lines, engines)

    compiled, report = _with_file(module, run)
    if settings.debug:
        print(str(report), file=__import__("sys").stderr)
    for line in report.fallback:
        _log.info("ember.ts: runs in TorchScript: %s", line)
    failed = [f for f in report.fallback if "failed to build" in f]
    if failed:
        warnings.warn("ember.ts: an engine segment failed to build and runs in TorchScript "
                      "(see the report: compiled.ember_report)")
    compiled.ember_report = report
    return compiled


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.empty(0, dtype=torch.uint8)


def _build_engines(c: Any, settings: CompileSettings, csettings: dict) -> list[dict]:
    """Builds (or loads from the engine cache) every engine segment of the TSCompilation `c`
    and hands each plan to it; the timing cache file is read before and written after."""
    timing = _timing_cache.load(settings.timing_cache)
    if timing is not None:
        c.set_timing_cache(_bytes_tensor(timing.serialize()))
    segments = list(c.engine_segments())
    engines = []

    def fingerprint(k):
        text, constants = c.fingerprint(k)
        return text, [t.numpy() for t in constants]

    def build(k):
        plan, io_json, build_log, seconds = c.build(k)
        io = json.loads(io_json)
        return {"plan": plan.numpy().tobytes(), "inputs": io["inputs"], "outputs": io["outputs"],
                "build_log": list(build_log), "build_seconds": float(seconds)}

    def use(k, built):
        io = {"backend": csettings["backend"],
              "inputs": [engine_cache._io(x) for x in built["inputs"]],
              "outputs": [engine_cache._io(x) for x in built["outputs"]]}
        c.add_engine(k, _bytes_tensor(built["plan"]), json.dumps(io))

    with _progress.BuildProgress(len(segments)) as progress:
        for k in segments:
            nodes = int(c.segment_size(k))
            progress.step(k, nodes)
            try:
                built = engine_cache.cached_build(
                    settings, csettings, lambda: fingerprint(k), lambda: build(k), k,
                    check=lambda b: use(k, b))
                if not built["cached"]:
                    use(k, built)
            except RuntimeError as e:
                if settings.pass_through_build_failures:
                    raise RuntimeError(f"ember.ts.compile: engine segment {k} failed to build: "
                                       f"{str(e).strip()}") from None
                c.add_failure(k, str(e).strip())
                continue
            engines.append({"segment": k, "nodes": nodes, "plan_bytes": len(built["plan"]),
                            "build_seconds": built["build_seconds"],
                            "build_log": built["build_log"], "cached": built["cached"],
                            "key": built["key"]})
            progress.done(k, nodes, built["build_seconds"], built["cached"])
            # The C++ builder's messages (its pass log), as on the dynamo path.
            for line in built["build_log"]:
                _build_log.debug("engine %d: %s", k, line)
    if timing is not None:
        from ember import _C
        _timing_cache.save(_C.TimingCache.from_bytes(c.timing_cache().numpy().tobytes()),
                           settings.timing_cache)
    return engines


def check_method_op_support(module: torch.jit.ScriptModule, method_name: str = "forward") -> bool:
    """True when every operator of the method can be evaluated or converted; otherwise logs
    each unsupported operator (logger "ember") and returns False."""
    module = _as_script_module(module)
    unsupported = _with_file(module, lambda tmp, path: list(
        torch.ops.ember.ts_check_support(path, method_name)))
    for line in unsupported:
        _log.warning("ember.ts: unsupported: %s", line)
    return not unsupported


def unsupported_ops(module: torch.jit.ScriptModule, method_name: str = "forward") -> list[str]:
    """The lines check_method_op_support logs ("aten::foo: no converter")."""
    module = _as_script_module(module)
    return _with_file(module, lambda tmp, path: list(
        torch.ops.ember.ts_check_support(path, method_name)))


def convert_method_to_engine(module: torch.jit.ScriptModule, method_name: str = "forward",
                             inputs: Sequence[Any] | None = None, **kwargs) -> bytes:
    """The whole method as ONE engine: the serialized plan. Raises when any node cannot be
    converted (the message lists each)."""
    module = _as_script_module(module)
    settings = CompileSettings.from_kwargs(**kwargs)
    if not inputs:
        raise ValueError("ember.ts.convert_method_to_engine: inputs= is required")
    specs = [input_spec(x, i) for i, x in enumerate(inputs)]

    def run(tmp, path):
        try:
            t = torch.ops.ember.ts_convert_to_engine(path, method_name, specs,
                                                    _settings_items(settings))
        except RuntimeError as e:
            raise _unwrap_error(e) from None
        return t.numpy().tobytes()

    return _with_file(module, run)


def embed_engine_in_new_module(plan: bytes) -> torch.jit.ScriptModule:
    """A ScriptModule whose forward runs the plan (inputs and outputs in the plan's order)."""
    _runtime.load_library()
    with tempfile.TemporaryDirectory(prefix="ember-ts-") as tmp:
        out = os.path.join(tmp, "engine.ts")
        t = torch.frombuffer(bytearray(plan), dtype=torch.uint8)
        try:
            torch.ops.ember.ts_embed_engine(t, out)
        except RuntimeError as e:
            raise _unwrap_error(e) from None
        return torch.jit.load(out)


def script_or_trace(module: torch.nn.Module, inputs: Sequence[Any]) -> torch.jit.ScriptModule:
    """torch.jit.script, or torch.jit.trace on example inputs when scripting fails (logged)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    module = module.eval()
    try:
        return torch.jit.script(module)
    except Exception as e:  # noqa: BLE001 - any scripting failure means: trace instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"ember.compile(ir='ts'): torch.jit.script failed ({first}); tracing with "
                      "torch.jit.trace instead (control flow is frozen to the example inputs' path)")
        examples = []
        for x in inputs:
            examples.append(x if isinstance(x, torch.Tensor) else x.example())
        with torch.no_grad():
            return torch.jit.trace(module, tuple(examples))


def input_spec_from_text(text: str) -> Input:
    """An ember.Input from emberc's form '(1,3,224,224)@f16' or
    '[(1,3,224,224);(4,3,224,224);(8,3,224,224)]@f32'. Raises ValueError showing the form."""
    from ember._importer import TORCH_DTYPES
    form = ("expected '(1,3,224,224)' or '[(1,3,224,224);(4,3,224,224);(8,3,224,224)]' "
            "(min;opt;max), optionally followed by '@f32', '@f16', '@bf16', '@i32', '@i64', '@bool'")
    body, _, dtype_name = text.replace(" ", "").partition("@")
    dtype = torch.float32
    if dtype_name:
        aliases = {"float": "f32", "float32": "f32", "half": "f16", "float16": "f16",
                   "bfloat16": "bf16", "int32": "i32", "int64": "i64", "long": "i64"}
        dtype = TORCH_DTYPES.get(aliases.get(dtype_name, dtype_name))
        if dtype is None:
            raise ValueError(f"input spec '{text}': unknown dtype '{dtype_name}'; {form}")

    def shape(part):
        if not (part.startswith("(") and part.endswith(")")):
            raise ValueError(f"input spec '{text}': '{part}' is not a shape in parentheses; {form}")
        inner = part[1:-1]
        try:
            return tuple(int(d) for d in inner.split(",")) if inner else ()
        except ValueError:
            raise ValueError(f"input spec '{text}': '{part}' has a size that is not an integer; "
                             f"{form}") from None

    if body.startswith("["):
        if not body.endswith("]"):
            raise ValueError(f"input spec '{text}': missing ']'; {form}")
        parts = body[1:-1].split(";")
        if len(parts) == 1:
            return Input(shape=shape(parts[0]), dtype=dtype)
        if len(parts) != 3:
            raise ValueError(f"input spec '{text}': a range needs three shapes (min;opt;max); {form}")
        lo, opt, hi = (shape(p) for p in parts)
        return Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dtype)
    return Input(shape=shape(body), dtype=dtype)

"""Extending Ember from Python: converters, FX lowering passes and module substitution.

    @ember.dynamo.converter(torch.ops.mylib.op.default)
    def convert_op(ctx, node, args, kwargs, name):
        x, alpha = args
        return ctx.net.add_elementwise(x, ctx.scalar(alpha, x.dtype, x.rank),
                                       ember.extending.ElementWiseOp.PROD, name).output()

    @ember.dynamo.lowering_pass
    def my_rewrite(gm: torch.fx.GraphModule) -> None: ...

    ember.dynamo.substitute(MyBlock, build_my_block)

See docs/extending.md. Converters registered here go into the same C++ registry as Ember's own
(the partitioner asks it, `python -m ember.coverage` lists it, torch_executed_ops excludes it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from typing import Any, Callable, Sequence

import torch
import torch.fx

from ember import _C
from ember._settings import op_key

__all__ = ["converter", "remove_converter", "ConverterContext", "Network", "Tensor", "Layer",
           "IRNode", "IRValue", "lowering_pass",
           "remove_lowering_pass", "lowering_passes", "substitute", "remove_substitution",
           "ActivationType", "ElementWiseOp", "UnaryOp", "ReduceOp", "PoolingType", "TopKOp",
           "GatherMode", "ScatterReduction", "NormalizationType", "ResizeMode",
           "ResizeCoordinate", "ResizeRounding", "PaddingMode", "CumulativeOp", "FillOp",
           "BUILTIN_PRIORITY"]

logger = logging.getLogger("ember")

# The network-definition API converters build with (handles valid during one conversion).
Network = _C.Network
Tensor = _C.Tensor
Layer = _C.Layer
IRNode = _C.IRNode
IRValue = _C.IRValue

# The engine's parameter enums, for converters: ElementWiseOp.SUM, ActivationType.RELU, ...
ActivationType = _C.ActivationType
ElementWiseOp = _C.ElementWiseOp
UnaryOp = _C.UnaryOp
ReduceOp = _C.ReduceOp
PoolingType = _C.PoolingType
TopKOp = _C.TopKOp
GatherMode = _C.GatherMode
ScatterReduction = _C.ScatterReduction
NormalizationType = _C.NormalizationType
ResizeMode = _C.ResizeMode
ResizeCoordinate = _C.ResizeCoordinate
ResizeRounding = _C.ResizeRounding
PaddingMode = _C.PaddingMode
CumulativeOp = _C.CumulativeOp
FillOp = _C.FillOp

#: The priority of Ember's own converters (a few specialized ones use 1). A converter registered
#: with a higher priority is asked first; at equal priority the one registered first wins.
BUILTIN_PRIORITY = 0


# ---------------------------------------------------------------------------------------------
# Converters

class ConverterContext:
    """What a Python converter builds with: ``net`` (the engine network, an ember._C.Network
    whose add_* methods mirror include/ember/engine/network.h) and the helpers Ember's C++
    converters share. Engine tensors and layers are valid during this conversion only."""

    def __init__(self, raw, node):
        self._raw = raw
        #: The IR node being converted (op, name, args as IRValues, outputs).
        self.node = node

    @property
    def net(self):
        return self._raw.net

    @property
    def backend(self) -> str:
        return self._raw.backend

    def tensor(self, value):
        """The engine tensor of an IR value (a constant becomes a Constant layer)."""
        return self._raw.tensor(value)

    def cast(self, x, to, name: str = ""):
        """x cast to `to` ("f16" or a torch.dtype); no layer when it already has that dtype."""
        return self._raw.cast(x, to, name)

    def scalar(self, value: float, dtype, rank: int = 0):
        """A constant of `dtype` with `rank` 1-dims, to broadcast against rank-`rank` tensors."""
        return self._raw.scalar(float(value), dtype, rank)

    def int_vector(self, values: Sequence[int], dtype="i64"):
        return self._raw.int_vector([int(v) for v in values], dtype)

    def broadcast_rank(self, x, rank: int):
        """x reshaped to `rank` by prepending 1-dims."""
        return self._raw.broadcast_rank(x, rank)

    def broadcast(self, *xs):
        """The tensors reshaped to their largest rank (elementwise layers need equal ranks)."""
        rank = max(x.rank for x in xs)
        return tuple(self._raw.broadcast_rank(x, rank) for x in xs)

    def operand(self, x, dtype, rank: int):
        """A number becomes a scalar constant of `dtype` and `rank`; a tensor is cast to
        `dtype` (the C++ ConversionContext::operand)."""
        if isinstance(x, (bool, int, float)):
            return self.scalar(float(x), dtype, rank)
        return self.cast(x, dtype)

    def engine_dtype(self, ir_dtype: str) -> str:
        """The engine dtype a value of IR dtype `ir_dtype` ("f64", "i64", ...) has in engines."""
        return self._raw.engine_dtype(ir_dtype)

    def constant(self, t: torch.Tensor, name: str = ""):
        """A Constant layer holding a copy of `t` (its dtype must exist in the engine)."""
        from ember._importer import DTYPE_NAMES
        host = t.detach().to("cpu").contiguous()
        dtype = DTYPE_NAMES.get(host.dtype)
        if dtype is None or dtype in ("f64", "i16"):
            raise TypeError(f"ctx.constant: dtype {host.dtype} has no engine type; convert it "
                            "first (float32, float16, bfloat16, int8, uint8, int32, int64, bool, "
                            "float8_e4m3fn)")
        data = host.reshape(-1).view(torch.uint8).numpy() if host.numel() else b""
        return self._raw.net.add_constant(data, dtype, list(host.shape), name).output()

    def layer_name(self, suffix: str = "") -> str:
        return self._raw.layer_name(suffix)


@dataclasses.dataclass
class _Registration:
    key: str
    label: str
    fn: Callable
    priority: int


_registered: dict[tuple[str, str], _Registration] = {}


def _schema_of(key: str):
    """The FunctionSchema of an op key ("mylib::op", "aten::add.Tensor"), or None."""
    ns, _, rest = key.partition("::")
    name, _, overload = rest.partition(".")
    try:
        packet = getattr(getattr(torch.ops, ns), name)
        return getattr(packet, overload or "default")._schema
    except (AttributeError, RuntimeError):
        return None


def _label_of(fn: Callable) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    return f"python:{mod}.{getattr(fn, '__qualname__', repr(fn))}"


def converter(op, capability_validator: Callable | None = None,
              supports_dynamic_shapes: bool = True, priority: int = BUILTIN_PRIORITY):
    """Registers ``fn(ctx, node, args, kwargs, name) -> tensor | tuple`` as the converter of
    `op` (an OpOverload such as ``torch.ops.mylib.op.default``, its key "mylib::op", or an
    OpOverloadPacket ``torch.ops.mylib.op`` for every overload).

    - args: the op's positional arguments in schema order, tensors as engine tensors;
      kwargs: its keyword-only arguments by name. Symbolic sizes are text ("s0*2").
    - name: a unique name to give the layers (``ctx.layer_name("suffix")`` makes more).
    - return: one engine tensor per output of the op (None for an output PyTorch never reads).
    - capability_validator(node) -> bool or str: False or a string (the reason) rejects this
      node; the partitioner then asks the next converter, or leaves the node to PyTorch.
    - supports_dynamic_shapes=False: only nodes whose shapes are all static.
    - priority: converters with a higher priority are asked first; Ember's own have
      BUILTIN_PRIORITY (0), so priority=1 overrides a built-in.

    An exception raised by the converter names the node and this converter; the node then runs
    in PyTorch with that message (pass_through_build_failures=True makes it an error).
    """
    if isinstance(op, torch._ops.OpOverloadPacket):  # torch.ops.mylib.op: every overload
        ops = [getattr(op, o) for o in op.overloads()]
    elif isinstance(op, (str, torch._ops.OpOverload)):
        ops = [op]
    else:
        raise TypeError(f"ember.dynamo.converter: {op!r} is not an op; pass an OpOverload such "
                        "as torch.ops.mylib.op.default or its key 'mylib::op'")
    targets = []
    for o in ops:
        key = o if isinstance(o, str) else op_key(o)
        targets.append((key, _schema_of(key) if isinstance(o, str) else o._schema))

    def register(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"ember.dynamo.converter: {fn!r} is not callable")
        label = _label_of(fn)
        for key, schema in targets:
            _install(key, schema, fn, capability_validator, supports_dynamic_shapes,
                     int(priority), label)
        return fn

    return register


def _split_args(schema, values: list) -> tuple[list, dict]:
    if schema is None:
        return values, {}
    args, kwargs = [], {}
    for a, v in zip(schema.arguments, values):
        if a.kwarg_only:
            kwargs[a.name] = v
        else:
            args.append(v)
    return args, kwargs


def _install(key, schema, fn, validator, dynamic, priority, label):
    def to_engine(ctx, v):
        if isinstance(v, _C.IRValue):
            return ctx.tensor(v)
        if isinstance(v, list) and any(isinstance(x, _C.IRValue) for x in v):
            return [None if x is None else ctx.tensor(x) for x in v]
        return v

    def call(raw_ctx, node):
        ctx = ConverterContext(raw_ctx, node)
        values = [to_engine(ctx, v) for v in node.args]
        args, kwargs = _split_args(schema, values)
        try:
            out = fn(ctx, node, args, kwargs, ctx.layer_name())
        except Exception as e:
            raise RuntimeError(
                f"Python converter {label[7:]} raised {type(e).__name__}: {e}") from e
        if isinstance(out, list):
            out = tuple(out)
        return out

    check = None
    if validator is not None:
        def check(node):
            r = validator(node)
            if isinstance(r, str):
                return r or f"rejected by the capability validator of {label}"
            if r is True:
                return None
            if r is False or r is None:
                return f"rejected by the capability validator of {label}"
            raise TypeError(f"capability validator of {label} returned {type(r).__name__}; "
                            "return True, False or a reason string")

    if (key, label) in _registered:  # re-registration (a re-run cell): replace it
        _C.remove_converter(key, label)
    _C.register_python_converter(key, call, check, bool(dynamic), priority, label)
    _registered[(key, label)] = _Registration(key, label, fn, priority)
    logger.debug("registered Python converter %s for %s (priority %d)", label, key, priority)


def remove_converter(op, fn: Callable | None = None) -> int:
    """Unregisters the Python converters of `op` (only `fn`'s when given). Returns how many."""
    key = op if isinstance(op, str) else op_key(op)
    removed = 0
    for (k, label), reg in list(_registered.items()):
        if k == key and (fn is None or reg.fn is fn):
            removed += _C.remove_converter(k, label)
            del _registered[(k, label)]
    return removed


# ---------------------------------------------------------------------------------------------
# Lowering passes over the FX graph (after decompositions, before the import into the IR)

_passes: list[Callable] = []


def lowering_pass(fn: Callable | None = None):
    """Registers ``fn(gm: torch.fx.GraphModule) -> None`` to rewrite the decomposed FX graph of
    every program Ember compiles, before it is imported. Passes run in registration order and
    mutate the graph in place; nodes they add need no ``meta["val"]``: Ember fills it by running
    the op on the fake tensors of its inputs."""
    def register(f):
        if f not in _passes:
            _passes.append(f)
        return f
    return register(fn) if fn is not None else register


def remove_lowering_pass(fn: Callable) -> None:
    if fn in _passes:
        _passes.remove(fn)


def lowering_passes() -> list[Callable]:
    return list(_passes)


def _fake_val(x):
    if isinstance(x, torch.fx.Node):
        return x.meta.get("val")
    return x


def _fill_meta(gm: torch.fx.GraphModule) -> None:
    """meta["val"] for nodes a pass added, from the fake tensors of their inputs."""
    from torch._guards import detect_fake_mode
    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    mode = detect_fake_mode(vals)
    for node in gm.graph.nodes:
        if node.op != "call_function" or "val" in node.meta:
            continue
        args = torch.fx.node.map_aggregate(node.args, _fake_val)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, _fake_val)
        ctx = mode if mode is not None else contextlib.nullcontext()
        with ctx:
            node.meta["val"] = node.target(*args, **kwargs)


def run_lowering_passes(ep: torch.export.ExportedProgram) -> list[str]:
    """Runs the registered passes on `ep`'s graph (a decomposed copy Ember owns). Returns one
    log line per pass."""
    log = []
    gm = ep.graph_module
    for p in _passes:
        before = len(gm.graph.nodes)
        try:
            p(gm)
        except Exception as e:
            raise RuntimeError(f"ember: lowering pass {_label_of(p)[7:]} failed: "
                               f"{type(e).__name__}: {e}") from e
        gm.graph.eliminate_dead_code()
        _fill_meta(gm)
        gm.graph.lint()
        log.append(f"{_label_of(p)[7:]}: {before} -> {len(gm.graph.nodes)} FX nodes")
    if _passes:
        gm.recompile()
    return log


# ---------------------------------------------------------------------------------------------
# Module substitution

@dataclasses.dataclass
class _Substitution:
    target: Any                  # a Module subclass or a qualified name
    replacement: Callable
    op: Any                      # the custom op's OpOverload
    key: str


_substitutions: list[_Substitution] = []
_instances: list[tuple[torch.nn.Module, list[str]]] = []
_lock = threading.Lock()
_library = torch.library.Library("ember_sub", "FRAGMENT")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _matches(sub: _Substitution, path: str, module: torch.nn.Module) -> bool:
    t = sub.target
    if isinstance(t, type):
        return isinstance(module, t)
    return t in (_class_name(type(module)), type(module).__qualname__, path)


def _state_of(module: torch.nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    names, tensors = [], []
    for n, p in module.named_parameters():
        names.append(n)
        tensors.append(p)
    for n, b in module.named_buffers():
        names.append(n)
        tensors.append(b)
    return names, tensors


def _run_original(inputs, params, instance: int):
    module, names = _instances[instance]
    return torch.func.functional_call(module, dict(zip(names, params)), tuple(inputs))


def substitute(target, replacement: Callable, *, name: str | None = None):
    """Replaces, before export, every submodule matching `target` (an nn.Module subclass, a
    qualified class name "pkg.mod.Class", or a submodule path "encoder.layer.0") by a call to
    a custom op ``torch.ops.ember_sub.<name>(inputs, params, instance)``.

    The op's eager (and fake) implementation is the original module's forward, so a fallback
    computes exactly what the module did. Its Ember converter calls
    ``replacement(ctx, module, inputs, params, name) -> tensor``: `module` the original
    submodule (read its configuration), `inputs` the engine tensors of forward's positional
    tensor arguments, `params` its parameters and buffers by name as engine tensors.

    The module's forward must take tensors only and return one tensor. Returns the custom op.
    """
    if not callable(replacement):
        raise TypeError("ember.dynamo.substitute: replacement must be a converter function "
                        "(ctx, module, inputs, params, name) -> tensor")
    if isinstance(target, type):
        if not issubclass(target, torch.nn.Module):
            raise TypeError(f"ember.dynamo.substitute: {target!r} is not an nn.Module subclass")
        default = target.__qualname__
    elif isinstance(target, str) and target:
        default = target
    else:
        raise TypeError("ember.dynamo.substitute: target must be an nn.Module subclass or a "
                        f"qualified name, got {target!r}")
    opname = re.sub(r"\W", "_", name or default)
    if not re.match(r"[A-Za-z_]", opname):
        opname = "m_" + opname
    with _lock:
        existing = [s for s in _substitutions if s.key == f"ember_sub::{opname}"]
        if existing:
            sub = existing[0]
            sub.target, sub.replacement = target, replacement
            return sub.op
        _library.define(f"{opname}(Tensor[] inputs, Tensor[] params, int instance) -> Tensor")
        _library.impl(opname, _run_original, "CompositeExplicitAutograd")
        torch.library.register_fake(f"ember_sub::{opname}", _run_original, lib=_library)
        op = getattr(torch.ops.ember_sub, opname).default
        sub = _Substitution(target, replacement, op, f"ember_sub::{opname}")
        _substitutions.append(sub)

    def convert(ctx, node, args, kwargs, layer_name):
        inputs, params, instance = args
        module, names = _instances[instance]
        return sub.replacement(ctx, module, list(inputs), dict(zip(names, params)), layer_name)

    convert.__qualname__ = f"substitute[{opname}]"
    convert.__module__ = getattr(replacement, "__module__", __name__)
    converter(op)(convert)
    return op


def remove_substitution(target) -> None:
    """Stops substituting `target` (the custom op stays defined)."""
    for s in list(_substitutions):
        if s.target is target or s.target == target:
            _substitutions.remove(s)
            remove_converter(s.key)


class _Substituted(torch.nn.Module):
    """Stands in for a matched submodule during export: one custom-op call."""

    def __init__(self, op, original: torch.nn.Module, instance: int, path: str):
        super().__init__()
        self.original = original
        self._op = op
        self._instance = instance
        self._path = path

    def forward(self, *args, **kwargs):
        if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
            raise TypeError(f"ember.dynamo.substitute: module '{self._path}' "
                            f"({_class_name(type(self.original))}) is called with non-tensor or "
                            "keyword arguments; substitution takes forward(*tensors) only")
        _, tensors = _state_of(self.original)
        return self._op(list(args), tensors, self._instance)


@contextlib.contextmanager
def substitutions_applied(model: torch.nn.Module):
    """Within the block, matching submodules of `model` are swapped for custom-op calls (the
    outermost match wins); they are put back afterwards, whatever happens."""
    if not _substitutions or not isinstance(model, torch.nn.Module):
        yield []
        return
    swapped = []  # (parent, attribute name, original)
    try:
        stack = [("", model, None, None)]
        while stack:
            path, mod, parent, attr = stack.pop()
            sub = next((s for s in _substitutions if parent is not None and _matches(s, path, mod)),
                       None)
            if sub is not None:
                names, _ = _state_of(mod)
                with _lock:
                    _instances.append((mod, names))
                    idx = len(_instances) - 1
                setattr(parent, attr, _Substituted(sub.op, mod, idx, path))
                swapped.append((parent, attr, mod, path, sub.key))
                continue
            for child_name, child in mod.named_children():
                stack.append((f"{path}.{child_name}" if path else child_name, child, mod,
                              child_name))
        for _, _, _, path, key in swapped:
            logger.info("ember: substituted module '%s' by %s", path, key)
        yield [(path, key) for _, _, _, path, key in swapped]
    finally:
        for parent, attr, mod, _, _ in reversed(swapped):
            setattr(parent, attr, mod)

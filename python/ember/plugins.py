"""Plugins: custom kernels inside engines (docs/extending.md, "Plugins").

Two ways in:

- ``ember.load_plugins(path)`` loads a shared library whose C++ plugin creators register with
  EMBER_REGISTER_PLUGIN (include/ember/engine/plugin.h; examples/plugin/). Such a library may also
  register converters (EMBER_CONVERTER) that add its Plugin layers for an op: loading it is the
  same mechanism as ``ember.load_converters`` (both dlopen the library into the process, whose
  one registry of converters and plugins lives in libember.so).
- ``ember.dynamo.plugin(torch.ops.mylib.op.default)`` makes a ``torch.library`` custom op with a
  kernel and a fake implementation, and no converter, run inside engines as a Plugin layer that
  calls the op's own kernel on the engine's buffers (the torch bridge's creator
  "ember::torch_op"). ``custom_ops_as_plugins=True`` does it for every such op of a program.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from ember import _C, _runtime
from ember._settings import op_key

__all__ = ["load_plugins", "plugin", "plugin_creators", "remove_plugin", "plugin_ops",
           "TORCH_OP_CREATOR", "TORCH_OP_VERSION"]

logger = logging.getLogger("ember")

#: The creator the torch bridge registers for custom ops (src/torch/torch_op_plugin.cpp).
TORCH_OP_CREATOR = "ember::torch_op"
TORCH_OP_VERSION = "1"
#: Priority of the converters ember.dynamo.plugin installs: below every other converter of the
#: same op, so a real converter (Python or C++) always wins over running the op's kernel.
PLUGIN_PRIORITY = -100

# Namespaces whose ops are PyTorch's own (never made plugins automatically).
_BUILTIN_NAMESPACES = frozenset({"aten", "prims", "ember", "_operator", "higher_order", "profiler",
                                 "_c10d_functional", "c10d_functional", "quantized_decomposed"})

_plugins: dict[str, bool] = {}  # op key -> cuda_graphs


def load_plugins(path: str) -> list[tuple[str, str]]:
    """Loads a shared library that registers plugin creators (and possibly converters and
    custom ops) and returns the (name, version) of the creators it added. The library links
    libember.so; it is loaded with RTLD_GLOBAL after libember_torch.so, so everything it registers
    is seen by the dynamo path, the TorchScript path and the runtime alike."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ember.load_plugins: no file at '{path}'")
    _runtime.load_library()
    before = set(_C.plugin_creators())
    _C.load_library(os.path.abspath(path))
    return sorted(set(_C.plugin_creators()) - before)


def plugin_creators() -> list[tuple[str, str]]:
    """(name, version) of every plugin creator registered in this process."""
    _runtime.load_library()  # the torch bridge registers "ember::torch_op"
    return list(_C.plugin_creators())


def _overloads(op) -> list:
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [getattr(op, o) for o in op.overloads()]
    if isinstance(op, torch._ops.OpOverload):
        return [op]
    raise TypeError(f"ember.dynamo.plugin: {op!r} is not a custom op; pass an OpOverload such as "
                    "torch.ops.mylib.op.default (defined with torch.library)")


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _encode_arg(value, inputs: list, where: str, type_name: str = "") -> str:
    """One `arg` line of the attributes (src/torch/torch_op_plugin.cpp has the grammar).
    `type_name` is the schema type ("float", "int", "SymInt[]", ...): numbers are encoded as
    the schema asks, so an int passed for a float parameter reaches the kernel as a float."""
    from ember.extending import Tensor
    base = type_name.rstrip("?")
    if isinstance(value, str) and base in ("int", "SymInt", "float", "Scalar"):
        raise TypeError(f"{where}: the {base} argument is the symbolic size {value!r}; a plugin "
                        "takes constant arguments only (make it a tensor input, or a constant)")
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value) \
            and base.endswith("[]") and not base.startswith("str"):
        raise TypeError(f"{where}: the argument {value!r} holds symbolic sizes; a plugin takes "
                        "constant arguments only")
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"f {float(value)!r}"
    if base == "float[]" and isinstance(value, (list, tuple)):
        return "fl " + ",".join(repr(float(v)) for v in value)
    if isinstance(value, Tensor):
        inputs.append(value)
        return f"t {len(inputs) - 1}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        idx = []
        for v in value:
            inputs.append(v)
            idx.append(str(len(inputs) - 1))
        return "tl " + ",".join(idx)
    if value is None:
        return "n"
    if isinstance(value, bool):
        return f"b {int(value)}"
    if isinstance(value, int):
        return f"i {value}"
    if isinstance(value, float):
        return f"f {value!r}"
    if isinstance(value, str):
        return f"s {_escape(value)}"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, bool) for v in value):
            return "bl " + ",".join(str(int(v)) for v in value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "il " + ",".join(str(v) for v in value)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "fl " + ",".join(repr(float(v)) for v in value)
    raise TypeError(f"{where}: an argument of type {type(value).__name__} ({value!r}) cannot be "
                    "passed to a plugin (tensors, tensor lists, None, bool, int, float, str and "
                    "lists of numbers can; a symbolic size cannot)")


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def attributes_for(ctx, node, args, kwargs, schema, cuda_graphs: bool) -> tuple[list, bytes]:
    """The Plugin layer's inputs and attributes for one node of a custom op."""
    where = f"plugin for {node.op}"
    inputs: list = []
    lines = ["ember-torch-op 1", f"op {schema.name} {schema.overload_name}"]
    values = list(args) + [kwargs[a.name] for a in schema.arguments if a.kwarg_only]
    positional = [a for a in schema.arguments if not a.kwarg_only]
    types = [str(a.type) for a in positional] + [str(a.type) for a in schema.arguments
                                                 if a.kwarg_only]
    for value, type_name in zip(values, types):
        lines.append("arg " + _encode_arg(value, inputs, where, type_name))
    for out in node.outputs:
        if out is None:
            raise TypeError(f"{where}: an output without a tensor value")
        lines.append(f"out {ctx.engine_dtype(out.dtype)} {_shape_text(out.shape)}")
    lines.append(f"graphs {int(bool(cuda_graphs))}")
    return inputs, ("\n".join(lines) + "\n").encode()


def _validate(node) -> bool | str:
    # Every output a tensor, every non-tensor argument encodable (checked when converting).
    if any(o is None for o in node.outputs):
        return "an output is not a tensor"
    return True


def plugin(op, *, cuda_graphs: bool = False, priority: int = PLUGIN_PRIORITY):
    """Runs the custom op `op` (an OpOverload, or an OpOverloadPacket for all its overloads)
    inside engines as a Plugin layer that calls its own kernel on the engine's buffers, instead
    of splitting the graph around it. The op needs a kernel for the engine's device and a fake
    implementation (torch.library.register_fake), which gives the output shapes. Its converter
    has the lowest priority: a real converter of the op still wins.

    cuda_graphs=True declares that the kernel may be captured into a CUDA graph (it only
    launches work on the current stream: no synchronization, no reads of device data on the
    host); CUDA engines with the plugin then replay graphs. Default False: they run layer by
    layer. Engines with the plugin save and load like others; loading needs the op registered
    (its module imported) in the loading process. `priority` (default -100, below every
    converter) may be raised to prefer the op's own kernel over an existing converter.
    Returns `op` (usable as a decorator)."""
    from ember import extending
    _runtime.load_library()  # registers the creator (ember::torch_op)
    for o in _overloads(op):
        ns = o._schema.name.split("::")[0]
        if ns in _BUILTIN_NAMESPACES:
            raise ValueError(f"ember.dynamo.plugin: {o} is one of PyTorch's own ops; plugins are "
                             "for custom ops defined with torch.library")
        key = op_key(o)
        schema = o._schema

        def convert(ctx, node, args, kwargs, name, schema=schema, graphs=cuda_graphs):
            inputs, attrs = attributes_for(ctx, node, args, kwargs, schema, graphs)
            layer = ctx.net.add_plugin(inputs, TORCH_OP_CREATOR, TORCH_OP_VERSION, attrs, name)
            return tuple(layer.outputs)

        convert.__qualname__ = f"plugin[{key}]"
        convert.__module__ = "ember.plugins"
        extending.converter(o, capability_validator=_validate,
                            priority=int(priority))(convert)
        _plugins[key] = bool(cuda_graphs)
        logger.debug("custom op %s runs inside engines as a plugin (cuda_graphs=%s)", key,
                     cuda_graphs)
    return op


def remove_plugin(op) -> None:
    """Undoes ember.dynamo.plugin(op)."""
    from ember import extending
    for o in _overloads(op):
        key = op_key(o)
        if _plugins.pop(key, None) is not None:
            for fn in [r.fn for (k, _), r in extending._registered.items() if k == key]:
                if getattr(fn, "__module__", "") == "ember.plugins":
                    extending.remove_converter(o, fn)


def plugin_ops() -> list[str]:
    """Keys of the custom ops ember.dynamo.plugin made plugins."""
    return sorted(_plugins)


def make_custom_ops_plugins(graph_nodes: Iterable) -> list[str]:
    """custom_ops_as_plugins: every custom op of the graph without a converter becomes a plugin.
    Returns the keys it added."""
    have = set(_C.converter_ops())
    added = []
    for n in graph_nodes:
        target = getattr(n, "target", None)
        if n.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        ns = target._schema.name.split("::")[0]
        key = op_key(target)
        if ns in _BUILTIN_NAMESPACES or key in have or key in _plugins:
            continue
        plugin(target)
        have.add(key)
        added.append(key)
    if added:
        logger.info("custom_ops_as_plugins: %s run inside engines as plugins", ", ".join(added))
    return added

"""The FX importer: a decomposed ExportedProgram's graph -> the C++ compiler IR (ember._C.Graph).

Each FX node with an aten OpOverload target becomes an IR node keyed "aten::add.Tensor" (the
default overload without a suffix), its arguments normalized to schema order with defaults
filled in. Parameters, buffers and lifted constants become IR constants that borrow the tensors'
memory. SymInt sizes (from node.meta["val"]) become symbolic dims over the export's symbols.

A node the IR cannot hold (not an aten op, a non-tensor result, a dtype the engine lacks) is not
imported as itself: it runs in PyTorch, and stands in the IR as an `ember::pytorch` node (no
converter: the partitioner always leaves it to PyTorch, with the importer's reason) that reads
the IR values it reads and produces its tensor results. So the partitioner sees the dependencies
through it (no engine both feeds and reads it), an engine exports what it reads instead of
PyTorch recomputing it, and it counts as fallback like any other node (`ImportedProgram.outside`,
the report, require_full_compilation). Size arithmetic and runtime asserts are the exception:
the IR holds sizes as symbolic dims, so they are left out.

Inside an engine every tensor lives on the engine's device, which is where the program's inputs
and weights are (or the device the user names; then the whole program moves there). A node whose
tensors (its results, or the non-constant tensors it reads) live on another device type than the
program's (a `.to("cpu")` and what reads its result in a CUDA program, a `.to("cuda")` and its
readers in a CPU one) runs in PyTorch, where the tensors are: put in an engine it would compute
on the wrong device or receive inputs the engine refuses.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Container

import sympy
import torch
import torch.fx

from ember import _C
from ember._settings import op_key

DTYPE_NAMES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.int8: "i8",
    torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64", torch.bool: "bool",
    torch.float64: "f64", torch.int16: "i16", torch.float8_e4m3fn: "f8e4m3",
}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


#: Ops whose result is a size or nothing (runtime asserts): the IR holds sizes as symbolic dims and
#: engines check their input ranges, so these are represented, not fallback.
SIZE_OPS = frozenset({
    "aten::sym_size.int", "aten::sym_numel", "aten::sym_stride.int", "aten::sym_storage_offset",
    "aten::_assert_tensor_metadata", "aten::_assert_scalar", "aten::sym_constrain_range",
    "aten::sym_constrain_range_for_size",
})


def is_size_node(node: torch.fx.Node) -> bool:
    """True for a node that computes a size, a symbolic scalar or an assert (no tensor): a
    SIZE_OPS op, or Python arithmetic (operator.mul, torch.sym_max, ...) on sizes."""
    if node.op != "call_function":
        return False
    if isinstance(node.target, torch._ops.OpOverload):
        return op_key(node.target) in SIZE_OPS
    if node.target is operator.getitem:
        return False
    return not any(isinstance(n.meta.get("val"), torch.Tensor) for n in node.all_input_nodes) and \
        not isinstance(node.meta.get("val"), torch.Tensor)


#: The IR op of a node that runs in PyTorch (kPyTorchOp in include/ember/compiler/partitioning.h).
PYTORCH_OP = "ember::pytorch"


class Unsupported(Exception):
    """A node or value the IR cannot represent (the reason is the message)."""


def sym_text(expr: sympy.Expr) -> str:
    """A sympy size expression (torch.export SymInt) as DimExpr text."""
    try:
        from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod
        mods = (Mod, PythonMod)
    except ImportError:  # pragma: no cover - older torch
        from torch.utils._sympy.functions import FloorDiv
        mods = ()
    if expr.is_Integer:
        return str(int(expr))
    if expr.is_Symbol:
        return str(expr.name)
    if isinstance(expr, sympy.Add):
        return "(" + " + ".join(sym_text(a) for a in expr.args) + ")"
    if isinstance(expr, sympy.Mul):
        return "(" + "*".join(sym_text(a) for a in expr.args) + ")"
    if isinstance(expr, FloorDiv):
        return f"floordiv({sym_text(expr.args[0])}, {sym_text(expr.args[1])})"
    if isinstance(expr, mods) or isinstance(expr, sympy.Mod):
        return f"mod({sym_text(expr.args[0])}, {sym_text(expr.args[1])})"
    # torch's own Min/Max (torch.utils._sympy.functions) are not sympy's subclasses.
    if isinstance(expr, (sympy.Min, sympy.Max)) or type(expr).__name__ in ("Min", "Max"):
        fn = "min" if type(expr).__name__ == "Min" else "max"
        args = [sym_text(a) for a in expr.args]
        text = args[0]
        for a in args[1:]:
            text = f"{fn}({text}, {a})"
        return text
    raise Unsupported(f"symbolic size {expr} ({type(expr).__name__}) has no engine form")


def dim_arg(d) -> int | str:
    """An int or SymInt as an int or DimExpr text."""
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_Integer else sym_text(expr)
    if isinstance(d, bool):
        raise Unsupported("a bool where a size was expected")
    return int(d)


def tensor_type(val) -> tuple[str, list]:
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"a {type(val).__name__} result, not a tensor")
    if val.dtype not in DTYPE_NAMES:
        raise Unsupported(f"dtype {val.dtype} has no engine type")
    return DTYPE_NAMES[val.dtype], [dim_arg(d) for d in val.shape]


def _tensor_vals(v) -> list:
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensor_vals(x)]
    return []


def foreign_device(node: torch.fx.Node, device_type: str,
                   constants: Container[str]) -> str | None:
    """The device (text) of a tensor `node` produces or reads that is not of `device_type`, or
    None. Constants (in `constants`) are exempt: they are copied into the plan."""
    vals = _tensor_vals(node.meta.get("val"))
    for n in node.all_input_nodes:
        if n.name not in constants:
            vals += _tensor_vals(n.meta.get("val"))
    for v in vals:
        if v.device.type != device_type:
            return str(v.device)
    return None


def _cpu_scalar(v: torch.Tensor) -> bool:
    return v.device.type == "cpu" and v.dim() == 0


def scalar_constant(node: torch.fx.Node, device_type: str, constants: Container[str]) -> bool:
    """True for a 0-dim CPU tensor made from constants only (`constants`: names of lifted
    constants and of earlier such scalars) and read only by nodes whose other tensors are on
    `device_type` or are CPU scalars too. PyTorch lets an op on any device read a CPU scalar, and
    programs lean on it: torchvision's Swin fills its shifted-window mask with lifted 0-dim
    constants (`lift_fresh_copy`, then `fill.Tensor` into a CUDA slice). Such a scalar is a
    constant of the engine, so neither it nor its readers count as on another device."""
    if device_type == "cpu":
        return False  # CPU tensors are the program's own: nothing to exempt
    val = node.meta.get("val")
    if not (isinstance(val, torch.Tensor) and _cpu_scalar(val)):
        return False
    if not all(n.name in constants for n in node.all_input_nodes):
        return False
    return _read_on_device(node, device_type, constants, set())


def _read_on_device(node: torch.fx.Node, device_type: str, constants: Container[str],
                    seen: set[str]) -> bool:
    """True when every reader of the CPU scalar `node` keeps its value off the CPU: it is not a
    program output, and each reader's other tensors are on `device_type` or CPU scalars, with
    a reader whose result is a CPU scalar itself read that way (so a chain of scalars that ends
    in CPU work, or in an output, stays in PyTorch as a whole)."""
    seen.add(node.name)
    for user in node.users:
        if user.op == "output":
            return False  # the program hands it back on the CPU
        vals = _tensor_vals(user.meta.get("val"))
        for n in user.all_input_nodes:
            if n is not node and n.name not in constants:
                vals += _tensor_vals(n.meta.get("val"))
        if any(v.device.type != device_type and not _cpu_scalar(v) for v in vals):
            return False  # a reader that runs on another device wants it on the CPU
        out = user.meta.get("val")
        if isinstance(out, torch.Tensor) and _cpu_scalar(out) and user.name not in seen:
            # A scalar made from this one: it too must be made from constants only, and read
            # the same way.
            if any(n is not node and n.name not in constants and n.name not in seen
                   for n in user.all_input_nodes):
                return False
            if not _read_on_device(user, device_type, constants, seen):
                return False
    return True


class _Exempt:
    """Names exempt from the device check: lifted constants and scalar_constant nodes."""

    def __init__(self, constants: Container[str], scalars: set[str]):
        self.constants, self.scalars = constants, scalars

    def __contains__(self, name: object) -> bool:
        return name in self.constants or name in self.scalars


def module_info(node: torch.fx.Node) -> tuple[str, list[str]]:
    stack = node.meta.get("nn_module_stack") or {}
    path, types = "", []
    for entry in stack.values():
        p, t = entry[0], entry[1]
        path = str(p)
        types.append(t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}")
    for prefix in ("L['self'].", "L__self___"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path, types


@dataclasses.dataclass
class ImportedProgram:
    graph: Any                                    # ember._C.Graph
    #: FX nodes not imported, with why: (fx name, target, reason).
    skipped: list[tuple[str, str, str]]
    #: The skipped nodes that run in PyTorch and count as fallback: (fx name, target, reason).
    #: Leaves out size arithmetic and asserts (is_size_node), a getitem of a skipped node (its
    #: producer counts), placeholders (inputs are not work) and nodes nothing reads.
    outside: list[tuple[str, str, str]]
    #: IR value name of every imported FX node that is a tensor.
    value_of: dict[str, str]
    #: FX placeholder name -> (kind, state key) for parameters/buffers/constants.
    lifted: dict[str, tuple[str, str]]
    #: Constant tensors by placeholder name (kept alive for the compiled program).
    constants: dict[str, torch.Tensor]
    #: User input placeholder names, in order.
    user_inputs: list[str]
    #: FX names of the nodes imported as themselves (aten ops), in order.
    nodes: list[str] = dataclasses.field(default_factory=list)


class _Importer:
    def __init__(self, ep: torch.export.ExportedProgram):
        self.ep = ep
        self.g = _C.Graph()
        self.value_of: dict[str, str] = {}
        self.skipped: list[tuple[str, str, str]] = []
        #: Outputs of ember::pytorch nodes with no IR type (placeholders): only other
        #: ember::pytorch nodes may read them.
        self.opaque: set[str] = set()
        self.nodes: list[str] = []

    # ---- arguments
    def encode(self, v: Any) -> tuple:
        if isinstance(v, torch.fx.Node):
            val = v.meta.get("val")
            if isinstance(val, torch.Tensor):
                if v.name not in self.value_of or self.value_of[v.name] in self.opaque:
                    raise Unsupported(f"its input '{v.name}' is not in the IR")
                return ("tensor", self.value_of[v.name])
            if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
                d = dim_arg(val)
                return ("int", d) if isinstance(d, int) else ("sym", d)
            raise Unsupported(f"argument '{v.name}' is a {type(val).__name__}")
        if v is None:
            return ("none",)
        if isinstance(v, bool):
            return ("bool", v)
        if isinstance(v, torch.SymInt):
            d = dim_arg(v)
            return ("int", d) if isinstance(d, int) else ("sym", d)
        if isinstance(v, int):
            return ("int", v)
        if isinstance(v, float):
            return ("float", v)
        if isinstance(v, str):
            return ("str", v)
        if isinstance(v, torch.dtype):
            if v not in DTYPE_NAMES:
                raise Unsupported(f"dtype argument {v} has no engine type")
            return ("dtype", DTYPE_NAMES[v])
        if isinstance(v, (torch.device, torch.layout, torch.memory_format)):
            return ("str", str(v))
        if isinstance(v, (list, tuple)):
            return self.encode_list(list(v))
        if isinstance(v, (torch.SymFloat, torch.SymBool)):
            raise Unsupported(f"a symbolic {type(v).__name__} argument")
        raise Unsupported(f"an argument of type {type(v).__name__}")

    def encode_list(self, items: list) -> tuple:
        if not items:
            return ("ints", [])

        def is_tensor(x):
            return isinstance(x, torch.fx.Node) and isinstance(x.meta.get("val"), torch.Tensor)

        if all(x is None or is_tensor(x) for x in items) and any(is_tensor(x) for x in items):
            return ("tensors", [None if x is None else self.encode(x)[1] for x in items])
        if all(isinstance(x, bool) for x in items):
            return ("bools", list(items))
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items) and any(
                isinstance(x, float) for x in items):
            return ("floats", [float(x) for x in items])
        dims = []
        for x in items:
            e = self.encode(x)
            if e[0] not in ("int", "sym"):
                raise Unsupported(f"a list mixing {e[0]} with sizes")
            dims.append(e[1])
        return ("ints", dims)

    def schema_args(self, node: torch.fx.Node) -> list:
        """Arguments in schema order, kwargs and defaults filled in."""
        schema = node.target._schema
        out = []
        for i, a in enumerate(schema.arguments):
            if i < len(node.args):
                out.append(node.args[i])
            elif a.name in node.kwargs:
                out.append(node.kwargs[a.name])
            elif a.has_default_value():
                out.append(a.default_value)
            else:
                out.append(None)
        return out

    # ---- nodes
    def add_outside(self, node: torch.fx.Node, reason: str) -> None:
        """A node that runs in PyTorch: an ember::pytorch node in the IR (see the module doc),
        unless it is size arithmetic or nothing reads it."""
        target = op_key(node.target) if isinstance(node.target, torch._ops.OpOverload) \
            else str(getattr(node.target, "__name__", node.target))
        self.skipped.append((node.name, target, reason))
        if not node.users or is_size_node(node):
            return
        inputs = []
        for n in node.all_input_nodes:
            v = self.value_of.get(n.name)
            if v is not None and v not in inputs:
                inputs.append(v)
        val = node.meta.get("val")
        multi = isinstance(val, (list, tuple))
        vals = (list(val) or [None]) if multi else [val]
        getitems = {u.args[1]: u for u in node.users
                    if u.op == "call_function" and u.target is operator.getitem} if multi else {}
        types, names, fx_names = [], [], []
        for i, v in enumerate(vals):
            t = None
            if isinstance(v, torch.Tensor):
                try:
                    t = tensor_type(v)
                except Unsupported:
                    pass
            if not multi:
                name = node.name
            elif i in getitems:
                name = getitems[i].name
            else:
                name = f"{node.name}__{i}"
            types.append(t or ("f32", []))  # no IR type: a placeholder only PyTorch reads
            names.append(name)
            fx_names.append(name if not multi or i in getitems else "")
            if t is None:
                self.opaque.add(name)
        path, mtypes = module_info(node)
        self.g.add_node(PYTORCH_OP, [("str", target), ("str", reason), ("tensors", inputs)],
                        types, names, fx_names, node.name, path, mtypes)
        for n in names:
            self.value_of[n] = n

    def add_op(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)):
            vals = list(val)
        else:
            vals = [val]
        args = [self.encode(a) for a in self.schema_args(node)]
        # Multi-output ops: each output is named by the getitem node that reads it.
        getitems = {u.args[1]: u for u in node.users
                    if u.op == "call_function" and u.target is operator.getitem}
        names, fx_names, out_types = [], [], []
        multi = isinstance(val, (list, tuple))

        def out_type(i, v):
            if not isinstance(v, torch.Tensor):
                return None
            try:
                return tensor_type(v)
            except Unsupported:
                if multi and i not in getitems:  # unused (an RNG state in u64): a placeholder
                    return None
                raise

        types = [out_type(i, v) for i, v in enumerate(vals)]
        for i, t in enumerate(types):
            # An optional output PyTorch left out, or a size (an attention kernel's max_q):
            # a placeholder 0-d value. Readers of a size take it from the FX meta, not the IR.
            if t is None:
                t = ("f32", [])
            out_types.append(t)
            if not multi:
                names.append(node.name)
                fx_names.append(node.name)
            elif i in getitems:
                names.append(getitems[i].name)
                fx_names.append(getitems[i].name)
            else:
                names.append(f"{node.name}__{i}")
                fx_names.append("")
        path, mtypes = module_info(node)
        self.g.add_node(op_key(node.target), args, out_types, names, fx_names, node.name, path,
                        mtypes)
        self.nodes.append(node.name)
        for n in names:
            self.value_of.setdefault(n, n)
        if multi:
            for i, u in getitems.items():
                self.value_of[u.name] = names[i]


def import_program(ep: torch.export.ExportedProgram,
                   symbol_ranges: dict[str, tuple[int, int, int]],
                   program_device: str | None = None) -> ImportedProgram:
    """Imports `ep` (already decomposed). symbol_ranges: symbol name -> (min, opt, max).
    program_device ("cpu", "cuda"): the device type of the program's inputs and weights; nodes
    on another one run in PyTorch (see the module doc). None skips the check."""
    imp = _Importer(ep)
    sig = ep.graph_signature
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    lifted, constants, user_inputs = {}, {}, []
    exempt = _Exempt(constants, set())  # from the device check
    from torch.export.graph_signature import InputKind

    for node in ep.graph_module.graph.nodes:
        if node.op == "placeholder":
            spec = kinds.get(node.name)
            if spec is None or spec.kind == InputKind.USER_INPUT:
                user_inputs.append(node.name)
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    try:
                        dtype, shape = tensor_type(val)
                        imp.g.add_input(node.name, dtype, shape, node.name)
                        imp.value_of[node.name] = node.name
                    except Unsupported as e:
                        imp.skipped.append((node.name, "placeholder", str(e)))
                continue
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                target = spec.target
                if target in ep.state_dict:
                    t = ep.state_dict[target]
                else:
                    t = ep.constants[target]
                t = t.detach()
                lifted[node.name] = (spec.kind.name, target)
                constants[node.name] = t
                host = t.to("cpu").contiguous()
                if host.dtype not in DTYPE_NAMES:
                    imp.skipped.append((node.name, "constant", f"dtype {host.dtype}"))
                    continue
                imp.g.add_constant(node.name, DTYPE_NAMES[host.dtype], list(host.shape),
                                   host.data_ptr(), host.numel() * host.element_size(), host,
                                   node.name)
                imp.value_of[node.name] = node.name
            else:
                imp.skipped.append((node.name, "placeholder", f"{spec.kind.name} input"))
            continue
        if node.op == "call_function":
            if node.target is operator.getitem:
                if node.name not in imp.value_of:  # its producer has no IR outputs to map
                    imp.add_outside(node, "reads a result of a node that runs in PyTorch")
                continue  # otherwise mapped by its producer
            if not isinstance(node.target, torch._ops.OpOverload):
                imp.add_outside(node, f"not an aten op ({node.target})")
                continue
            val = node.meta.get("val")
            if not (isinstance(val, torch.Tensor) or (isinstance(val, (list, tuple)) and val and all(
                    v is None or isinstance(v, (torch.Tensor, torch.SymInt))
                    or (isinstance(v, int) and not isinstance(v, bool)) for v in val)
                    and any(isinstance(v, torch.Tensor) for v in val))):
                imp.add_outside(node, "its result is not a tensor")
                continue
            device, scalar = None, False
            if program_device:
                scalar = scalar_constant(node, program_device, exempt)
                if not scalar:
                    device = foreign_device(node, program_device, exempt)
            if device is not None:
                imp.add_outside(node, f"its tensors are on device '{device}', not on the "
                                f"program's {program_device} device where its inputs and weights "
                                "(and so its engines) are; it runs in PyTorch, where they are")
                continue
            try:
                imp.add_op(node)
                if scalar:  # its readers may now count it as the engine's (once it is one)
                    exempt.scalars.add(node.name)
            except Unsupported as e:
                imp.add_outside(node, str(e))
            continue
        if node.op == "output":
            outs = []
            flat = node.args[0]
            for o in (flat if isinstance(flat, (list, tuple)) else [flat]):
                if isinstance(o, torch.fx.Node) and o.name in imp.value_of:
                    outs.append(imp.value_of[o.name])
            imp.g.set_outputs(outs)
        elif node.op == "get_attr":
            imp.skipped.append((node.name, "get_attr", "attribute read"))

    for name, (lo, opt, hi) in symbol_ranges.items():
        imp.g.add_symbol(name, lo, opt, hi)
    return ImportedProgram(imp.g, imp.skipped, _outside_nodes(ep, imp), imp.value_of, lifted,
                           constants, user_inputs, imp.nodes)


def _outside_nodes(ep: torch.export.ExportedProgram,
                   imp: _Importer) -> list[tuple[str, str, str]]:
    """The skipped nodes that count as fallback (those add_outside put in the IR)."""
    by_name = {n.name: n for n in ep.graph_module.graph.nodes}
    outside = []
    for name, target, why in imp.skipped:
        node = by_name.get(name)
        if node is None or node.op != "call_function" or not node.users or is_size_node(node):
            continue
        outside.append((name, target, why))
    return outside

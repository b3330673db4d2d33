"""The PyTorch side of the torch bridge (see docs/torch_bridge.md).

`load_library()` loads libember_torch.so, which registers the TorchBind class
`torch.classes.ember.Engine` and the op `torch.ops.ember.execute_engine`, and registers here the
pieces torch.export and FakeTensorMode need: a fake (meta) implementation of the op whose output
shapes come from the engine's symbolic output shapes, and a fake class for the Engine.

This module imports only torch, so it works before the rest of the package is built.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import warnings
from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = [
    "STATE_TAG",
    "DimExprError",
    "UnboundSymbolError",
    "evaluate_dim",
    "library_path",
    "load_library",
    "make_engine",
    "make_state",
    "parse_shape",
]

#: Element 0 of an Engine state list; element 1 is the plan in base64, element 2 metadata JSON.
STATE_TAG = "ember-engine-v1"

_LIBRARY_NAME = "libember_torch.so"
_lock = threading.Lock()
_loaded_path: Optional[str] = None

# Compiler ScalarType names (the metadata's torch_dtype) as torch dtypes.
TORCH_DTYPES: Dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "i32": torch.int32,
    "i64": torch.int64,
    "bool": torch.bool,
    "f64": torch.float64,
    "i16": torch.int16,
    "f8e4m3": torch.float8_e4m3fn,
}


def library_path() -> Optional[str]:
    """Where libember_torch.so is: in $EMBER_NATIVE_DIR when set (an explicit choice, e.g. a
    build folder such as build/dev/src/torch, wins over an installed copy), else next to this
    file (installed package), else beside ember._C (editable installs). None when none has it."""
    candidates = []
    native_dir = os.environ.get("EMBER_NATIVE_DIR")
    if native_dir:
        candidates.append(os.path.join(native_dir, _LIBRARY_NAME))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY_NAME))
    # Editable installs keep the native files in site-packages, beside ember._C, not here.
    # ember._C may be missing (source tree without an install): then only the other places count.
    try:
        from ember import _C
    except ImportError:
        _C = None
    if _C is not None and getattr(_C, "__file__", None):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(_C.__file__)), _LIBRARY_NAME))
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def load_library() -> str:
    """Loads libember_torch.so once and registers the fake op and fake class; returns its path.

    Raises RuntimeError saying where it looked when the library is not found.
    """
    global _loaded_path
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        path = library_path()
        if path is None:
            here = os.path.dirname(os.path.abspath(__file__))
            raise RuntimeError(
                f"ember: {_LIBRARY_NAME} not found in {here} or in $EMBER_NATIVE_DIR "
                f"({os.environ.get('EMBER_NATIVE_DIR', 'unset')}). Install the package with "
                "EMBER_BUILD_TORCH=ON (the default in pyproject.toml), or build the target "
                "ember_torch and set EMBER_NATIVE_DIR to <build>/src/torch."
            )
        torch.ops.load_library(path)
        _register_fakes()
        _answer_torch_function_lookups()
        _loaded_path = path
        return path


def _answer_torch_function_lookups() -> None:
    """Makes the per-call `__torch_function__` lookup on Engine objects cheap.

    Every call of `torch.ops.ember.execute_engine` from Python checks each argument for a
    `__torch_function__` override. On the Engine (a torch.ScriptObject) that lookup reaches
    ScriptObject.__getattr__, whose C++ side throws and translates an exception for the missing
    attribute: about half of the op's host time for a small engine on the CPU (76 -> 35 us a
    call, 2026-12-06). This answers that one name with the same AttributeError from Python;
    every other attribute goes to PyTorch's own __getattr__, so hasattr() and
    torch.overrides.is_tensor_like() give what they gave before.
    """
    cls = torch._C.ScriptObject
    original = cls.__getattr__
    if getattr(original, "_ember_torch_function_answer", False):
        return

    def __getattr__(self, name):  # noqa: N807 (the slot's own name)
        if name == "__torch_function__":
            raise AttributeError(name)
        return original(self, name)

    __getattr__._ember_torch_function_answer = True
    try:
        cls.__getattr__ = __getattr__
    except (AttributeError, TypeError):  # an immutable type in some PyTorch build: keep its own
        pass


def make_state(plan: bytes, metadata: dict) -> List[str]:
    """The state list [tag, plan base64, metadata JSON] an Engine is constructed from."""
    return [STATE_TAG, base64.b64encode(bytes(plan)).decode("ascii"), json.dumps(metadata)]


def make_engine(plan: bytes, metadata: dict) -> torch.ScriptObject:
    """A torch.classes.ember.Engine for a serialized plan and its I/O metadata
    ({"backend": ..., "inputs": [{"name", "torch_dtype", "engine_dtype", "shape"}], "outputs": [...]}).

    The same engine as Engine(make_state(plan, metadata)), through engine_from_plan: the plan goes
    in as a view of its bytes instead of base64 text (Qwen2-0.5B's 989 MB plan took 16 s that
    way on 2 cores, of which 2 s are the deserialization itself)."""
    load_library()
    with warnings.catch_warnings():
        # frombuffer over read-only bytes: the op only reads them.
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        view = torch.frombuffer(plan, dtype=torch.uint8) if len(plan) else torch.empty(0, dtype=torch.uint8)
    return torch.ops.ember.engine_from_plan(view, json.dumps(metadata))


# ------------------------------------------------------------------ symbolic shape text
# The grammar DimExpr::to_string prints (src/engine/network/dim.cpp):
#   expr   := term (('+' | '-') term)*
#   term   := unary ('*' unary)*
#   unary  := '-' unary | atom
#   atom   := INT | IDENT | IDENT '(' expr ',' expr ')' | '(' expr ')'
# with the functions floordiv, mod (Python floor semantics), min and max.


class DimExprError(ValueError):
    """Malformed shape text, or a symbol without a value."""


class UnboundSymbolError(DimExprError):
    """A well-formed expression uses a symbol that has no value."""


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")
_MAX_DEPTH = 64

Dim = Union[int, torch.SymInt]


def _sym_min(a: Dim, b: Dim) -> Dim:
    return torch.sym_min(a, b) if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt) else min(a, b)


def _sym_max(a: Dim, b: Dim) -> Dim:
    return torch.sym_max(a, b) if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt) else max(a, b)


def _floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(b, int) and b == 0:
        raise DimExprError("floordiv by zero in a shape expression")
    return a // b


def _mod(a: Dim, b: Dim) -> Dim:
    if isinstance(b, int) and b == 0:
        raise DimExprError("mod by zero in a shape expression")
    return a % b


_FUNCTIONS = {"floordiv": _floordiv, "mod": _mod, "min": _sym_min, "max": _sym_max}


class _DimParser:
    def __init__(self, text: str, bindings: Dict[str, Dim]):
        self.text = text
        self.bindings = bindings
        self.tokens = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            self.tokens.append(m.group(0).strip())
            pos = m.end()
        self.i = 0

    def error(self, what: str) -> DimExprError:
        return DimExprError(f"shape expression {self.text!r}: {what}")

    def peek(self) -> Optional[str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: Optional[str] = None) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end")
        if expected is not None and tok != expected:
            raise self.error(f"expected {expected!r}, found {tok!r}")
        self.i += 1
        return tok

    def parse_all(self) -> Dim:
        value = self.expr(0)
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return value

    def expr(self, depth: int) -> Dim:
        if depth > _MAX_DEPTH:
            raise self.error("nested too deeply")
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Dim:
        value = self.unary(depth)
        while self.peek() == "*":
            self.take()
            value = value * self.unary(depth)
        return value

    def unary(self, depth: int) -> Dim:
        if self.peek() == "-":
            self.take()
            return -self.unary(depth + 1)
        return self.atom(depth)

    def atom(self, depth: int) -> Dim:
        tok = self.take()
        if tok.isdigit():
            return int(tok)
        if tok == "(":
            value = self.expr(depth + 1)
            self.take(")")
            return value
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            if self.peek() == "(":
                fn = _FUNCTIONS.get(tok)
                if fn is None:
                    raise self.error(f"unknown function {tok!r} (expected one of {sorted(_FUNCTIONS)})")
                self.take("(")
                a = self.expr(depth + 1)
                self.take(",")
                b = self.expr(depth + 1)
                self.take(")")
                return fn(a, b)
            if tok not in self.bindings:
                raise UnboundSymbolError(
                    f"shape expression {self.text!r}: symbol {tok!r} has no value "
                    f"(bound: {sorted(self.bindings)})"
                )
            return self.bindings[tok]
        raise self.error(f"unexpected {tok!r}")


def evaluate_dim(text: str, bindings: Dict[str, Dim]) -> Dim:
    """Evaluates one dimension expression ("s0*3", "floordiv(s1+1, 2)") with `bindings` (ints or
    SymInts). No eval(): a small recursive-descent parser with a depth limit."""
    return _DimParser(text, bindings).parse_all()


def parse_shape(text: str) -> List[str]:
    """Splits "[s0, 3, floordiv(s1, 2)]" into its dimension texts (commas inside calls stay)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise DimExprError(f"shape {text!r} must be written [d0, d1, ...]")
    body = text[1:-1].strip()
    if not body:
        return []
    dims, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            dims.append(body[start:i].strip())
            start = i + 1
    dims.append(body[start:].strip())
    return dims


# ------------------------------------------------------------------ fake class and fake op


class FakeEngine:
    """What torch.export and FakeTensorMode see in place of a torch.classes.ember.Engine: the
    same state list, parsed in Python, with the metadata methods of the real class."""

    def __init__(self, state: Sequence[str]):
        state = list(state)
        if not state or state[0] != STATE_TAG:
            found = state[0] if state else "<empty state>"
            raise RuntimeError(f"ember.Engine state: expected format tag {STATE_TAG!r} but found {found!r}")
        self.state_list = state
        self.metadata = json.loads(state[2])
        self._real = None
        if any("shape" not in io for io in self.metadata["inputs"] + self.metadata["outputs"]):
            # Shapes left out of the metadata come from the plan.
            self.metadata = json.loads(self._real_engine().metadata_json())

    @classmethod
    def of_engine(cls, engine: torch.ScriptObject) -> "FakeEngine":
        """The view of a real Engine, from its metadata: its state list is not copied (it holds
        the whole plan in base64, 1.3 GB for Qwen2-0.5B) unless state() is asked for."""
        fake = cls.__new__(cls)
        fake.state_list = None
        fake.metadata = json.loads(engine.metadata_json())
        fake._real = engine
        return fake

    def _real_engine(self) -> torch.ScriptObject:
        if self._real is None:
            self._real = torch.classes.ember.Engine(self.state_list)
        return self._real

    @classmethod
    def __obj_unflatten__(cls, flat):
        return cls(**dict(flat))

    def state(self) -> List[str]:
        return list(self.state_list if self.state_list is not None else self._real.state())

    def backend(self) -> str:
        return self.metadata["backend"]

    def input_names(self) -> List[str]:
        return [io["name"] for io in self.metadata["inputs"]]

    def output_names(self) -> List[str]:
        return [io["name"] for io in self.metadata["outputs"]]

    def input_shapes(self) -> List[str]:
        return [io["shape"] for io in self.metadata["inputs"]]

    def output_shapes(self) -> List[str]:
        return [io["shape"] for io in self.metadata["outputs"]]

    def input_dtypes(self) -> List[str]:
        return [io["torch_dtype"] for io in self.metadata["inputs"]]

    def output_dtypes(self) -> List[str]:
        return [io["torch_dtype"] for io in self.metadata["outputs"]]

    def num_runs(self) -> int:
        return 0

    def cuda_graph_stats(self) -> list[int]:
        return [0, 0, 0, 0]

    def cuda_graph_disabled_reasons(self) -> str:
        return ""

    def device_index(self) -> int:
        return int(self.metadata.get("device_index", -1))

    def pooled_contexts(self) -> int:
        return 0

    def metadata_json(self) -> str:
        return json.dumps(self.metadata)

    def inspect(self) -> str:
        return self._real_engine().inspect()


def _engine_info(engine) -> "FakeEngine":
    """Metadata of a real Engine or of a FakeScriptObject wrapping a FakeEngine."""
    wrapped = getattr(engine, "wrapped_obj", None)
    if isinstance(wrapped, FakeEngine):
        return wrapped
    if isinstance(engine, FakeEngine):
        return engine
    # A real torch.classes.ember.Engine (FakeTensorMode outside torch.export).
    return FakeEngine.of_engine(engine)


def _execute_engine_fake(inputs: List[torch.Tensor], engine) -> List[torch.Tensor]:
    info = _engine_info(engine)
    meta_in, meta_out = info.metadata["inputs"], info.metadata["outputs"]
    if len(inputs) != len(meta_in):
        raise RuntimeError(
            f"ember::execute_engine: the engine takes {len(meta_in)} input(s) "
            f"{[io['name'] for io in meta_in]}, got {len(inputs)}"
        )
    # Bind each symbol from the first input dim that is exactly that symbol; constant dims and
    # repeated symbols become checks, so export records the constraints the engine relies on.
    bindings: Dict[str, Dim] = {}
    for x, io in zip(inputs, meta_in):
        want = TORCH_DTYPES[io["torch_dtype"]]
        if x.dtype != want:
            raise RuntimeError(
                f"ember::execute_engine: input '{io['name']}' must have dtype {want}, got {x.dtype}"
            )
        dims = parse_shape(io["shape"])
        if len(dims) != x.dim():
            raise RuntimeError(
                f"ember::execute_engine: input '{io['name']}' has rank {x.dim()} but the engine "
                f"expects shape {io['shape']}"
            )
        for d, text in enumerate(dims):
            size = x.shape[d]
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
                if text in bindings:
                    torch._check(size == bindings[text], lambda: f"input '{io['name']}' dim {d} must equal {text}")
                else:
                    bindings[text] = size
            elif re.fullmatch(r"-?\d+", text):
                torch._check(size == int(text), lambda: f"input '{io['name']}' dim {d} must be {text}")
    device = inputs[0].device if inputs else torch.device("cpu")
    outputs = []
    for io in meta_out:
        shape = []
        for text in parse_shape(io["shape"]):
            try:
                shape.append(evaluate_dim(text, bindings))
            except UnboundSymbolError:
                # A symbol no input dim defines (data-dependent size): an unbacked SymInt.
                shape.append(torch.library.get_ctx().new_dynamic_size())
        outputs.append(torch.empty(shape, dtype=TORCH_DTYPES[io["torch_dtype"]], device=device))
    return outputs


def _register_fakes() -> None:
    # `import ember` loads the library (ember/__init__.py); a second copy of this module (a test
    # that runs this file from source) then finds the fakes registered already.
    from torch._library import fake_class_registry, simple_registry
    if simple_registry.singleton.find("ember::execute_engine").fake_impl.kernel is None:
        torch.library.register_fake("ember::execute_engine")(_execute_engine_fake)
    if not fake_class_registry.global_fake_class_registry.has_impl("ember::Engine"):
        torch._library.register_fake_class("ember::Engine")(FakeEngine)

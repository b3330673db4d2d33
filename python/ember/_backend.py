"""torch.compile(backend="ember"): the JIT path (docs/torch_compile.md).

Dynamo hands the backend one FX graph per captured region (graph breaks give several). Each
graph goes through the export path's pipeline: the graph, with the model's parameters and
buffers frozen into a small wrapper module, is traced with torch.export (non-strict, the
dynamic dims Dynamo found declared as torch.export.Dim with their ranges), then
ember.dynamo.compile decomposes it with Ember's table, imports, lowers, partitions, converts
and builds (through the engine cache). What Ember does not take runs in PyTorch inside that
graph.

Shapes: a dim Dynamo made dynamic gets one engine for its whole range, taken from
options={"inputs": [ember.Input(...)]} or torch._dynamo.mark_dynamic(x, d, min=, max=). A dim
with no upper bound (Dynamo's automatic dynamic shapes, dynamic=True) gets engines built per
concrete shape on first use, through the engine cache; so does any shape outside a declared
range that Dynamo's guards let through.
"""

from __future__ import annotations

import operator
import threading
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.fx

from ember import _C, dynamo
from ember._input import Input
from ember._settings import CompileSettings
from ember.logging import Counters, get_logger

__all__ = ["backend", "parse_options", "stats", "reset_stats"]

log = get_logger("torch_compile")

_stats = Counters("graphs", "engine_graphs", "pytorch_graphs", "shape_builds")
_grad_warned = False


def stats() -> dict:
    """Counters for this process: ``graphs`` (Dynamo graphs the backend received),
    ``engine_graphs`` (compiled through Ember), ``pytorch_graphs`` (left to PyTorch: gradients,
    unsupported inputs), ``shape_builds`` (compiles for a concrete shape outside any range)."""
    return _stats.snapshot()


def reset_stats() -> None:
    _stats.reset()


def _count(name: str) -> None:
    _stats.count(name)


def parse_options(options: dict | None) -> tuple[CompileSettings, list[Input] | None]:
    """torch.compile's options={...}: CompileSettings fields plus "inputs" (ember.Input or
    tensors, one per graph input tensor in the order the model takes them)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError("ember: torch.compile options must be a dict, got "
                        f"{type(options).__name__}")
    opts = dict(options)
    specs = opts.pop("inputs", None)
    settings = CompileSettings.from_kwargs(**opts)
    if specs is not None:
        if isinstance(specs, (Input, torch.Tensor)):
            specs = [specs]
        out = []
        for i, s in enumerate(specs):
            if isinstance(s, torch.Tensor):
                s = Input.from_tensor(s)
            if not isinstance(s, Input):
                raise TypeError(f"ember: options['inputs'][{i}] must be an ember.Input or a "
                                f"torch.Tensor, got {type(s).__name__}")
            out.append(s)
        specs = out
    return settings, specs


def backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
            options: dict | None = None, mode: str | None = None) -> Callable:
    """The "ember" torch.compile backend (registered when ember is imported, and through the
    torch_dynamo_backends entry point)."""
    settings, specs = parse_options(options)
    _count("graphs")
    if mode not in (None, "default"):
        log.warning("torch.compile mode=%r is ignored by the ember backend (use options=)", mode)
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad
                                       for x in example_inputs):
        _warn_grad()
        _count("pytorch_graphs")
        return gm.forward
    try:
        compiled = _EmberGraph(gm, list(example_inputs), settings, specs)
    except _Unsupported as e:
        log.warning("a Dynamo graph runs in PyTorch: %s", e)
        _count("pytorch_graphs")
        return gm.forward
    except _CompileFailed as e:
        if settings.pass_through_build_failures:
            raise e.__cause__ from None
        msg = f"ember: a Dynamo graph failed to compile and runs in PyTorch: {e}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
        _count("pytorch_graphs")
        return gm.forward
    _count("engine_graphs")
    return compiled


def _warn_grad() -> None:
    global _grad_warned
    msg = ("ember: a torch.compile graph needs gradients (grad mode is on and an input or "
           "parameter requires grad), so it runs in PyTorch: Ember builds inference engines, "
           "which compute no gradients. Call the model under torch.no_grad() or "
           "torch.inference_mode() (or set requires_grad_(False) on its parameters) to run "
           "it with Ember.")
    log.warning(msg)
    if not _grad_warned:
        _grad_warned = True
        warnings.warn(msg, stacklevel=3)


class _Unsupported(Exception):
    """A graph the backend leaves to PyTorch, with why."""


class _CompileFailed(Exception):
    """torch.export or Ember's pipeline failed on a graph (the cause is chained)."""


def _is_buffer(node: torch.fx.Node) -> bool:
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if source is not None else ""
    name = name() if callable(name) else str(name)
    return "._buffers[" in name


class _Frozen(torch.nn.Module):
    """The Dynamo graph with its parameters and buffers as attributes (so torch.export lifts
    them as constants the engines embed) and its SymInt inputs read from tensor sizes; it
    takes only the user tensors."""

    def __init__(self, gm: torch.fx.GraphModule, num_args: int, weights: dict[int, torch.Tensor],
                 buffers: set[int], user: list[int], sym_from: dict[int, tuple[int, int]]):
        super().__init__()
        self.gm = gm
        self.num_args = num_args
        self.weight_names: dict[int, str] = {}
        for j, (pos, t) in enumerate(sorted(weights.items())):
            name = f"w{j}"
            if pos in buffers:
                self.register_buffer(name, t.detach())
            else:
                self.register_parameter(name, torch.nn.Parameter(t.detach(), requires_grad=False))
            self.weight_names[pos] = name
        self.user = user
        self.sym_from = sym_from

    def forward(self, *xs):
        args: list[Any] = [None] * self.num_args
        for k, pos in enumerate(self.user):
            args[pos] = xs[k]
        for pos, name in self.weight_names.items():
            args[pos] = getattr(self, name)
        for pos, (k, d) in self.sym_from.items():
            args[pos] = xs[k].shape[d]
        return self.gm(*args)


class _EmberGraph:
    """What the backend returns for one Dynamo graph: engines for the declared ranges, engines
    per concrete shape outside them, and a check that the frozen weights did not change."""

    def __init__(self, gm, example_inputs, settings: CompileSettings, specs: list[Input] | None):
        self.gm = gm
        self.settings = settings
        self.specs = specs
        self.lock = threading.Lock()
        self._setup(example_inputs)

    # -- analysis
    def _setup(self, args: list) -> None:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(args):
            raise _Unsupported(f"{len(placeholders)} placeholders but {len(args)} inputs")
        weights, buffers, user, syms = {}, set(), [], {}
        for pos, (node, x) in enumerate(zip(placeholders, args)):
            if isinstance(x, torch._subclasses.FakeTensor):
                raise _Unsupported(f"input '{node.name}' is a fake tensor (no data to embed)")
            if isinstance(x, torch.Tensor):
                if isinstance(x, torch.nn.Parameter) or _is_buffer(node):
                    weights[pos] = x
                    if not isinstance(x, torch.nn.Parameter):
                        buffers.add(pos)
                else:
                    user.append(pos)
            elif isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool):
                syms[pos] = node
            else:
                raise _Unsupported(f"input '{node.name}' is a {type(x).__name__}")
        user_vals = [placeholders[p].meta.get("example_value") for p in user]
        sym_from: dict[int, tuple[int, int]] = {}
        for pos, node in syms.items():
            val = node.meta.get("example_value")
            expr = val.node.expr if isinstance(val, torch.SymInt) else None
            found = None
            for k, v in enumerate(user_vals):
                if isinstance(v, torch.Tensor):
                    for d, s in enumerate(v.shape):
                        if isinstance(s, torch.SymInt) and s.node.expr == expr:
                            found = (k, d)
                            break
                if found:
                    break
            if found is None:
                raise _Unsupported(f"size input '{node.name}' is not a dim of any input tensor")
            sym_from[pos] = found
        self.user = user
        self.frozen = _Frozen(self.gm, len(args), weights, buffers, user, sym_from)
        # What _stale compares on every call: the frozen tensors, and their version counters.
        self.weight_tensors = list(weights.values())
        self.weight_versions = [_version(t) for t in self.weight_tensors]
        # The attribute read is C-level; inference tensors (no version counter: -1) need
        # _version's try. The identity check runs first, so a same tensor is read the same way.
        self.version_of = (operator.attrgetter("_version") if min(self.weight_versions, default=0) >= 0
                           else _version)
        positions = list(weights)
        self.weight_args = (lambda args: ()) if not positions else (
            (lambda args, p=positions[0]: (args[p],)) if len(positions) == 1
            else operator.itemgetter(*positions))
        self.device = self._device(args)
        self.ranges, self.bounded = self._ranges(placeholders, user, args)
        self.static: dict[tuple, torch.fx.GraphModule] = {}
        self.compiled = None
        if self.bounded:
            self.compiled = self._compile([args[p] for p in user], dynamic=True)
        else:
            # No upper bound on some dim: engines per concrete shape, the first one now.
            self._static_for([args[p] for p in user])

    def _device(self, args) -> str | None:
        if self.settings.device is not None:
            return self.settings.device
        on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in args)
        if on_cuda and "cuda" in _C.available_backends():
            return "cuda"
        return None if on_cuda else "cpu"

    def _ranges(self, placeholders, user, args):
        """Per user tensor: {dim: (symbol, min, opt, max)}; and whether every dynamic dim has a
        finite range."""
        ranges: list[dict[int, tuple[str, int, int, int]]] = []
        bounded = True
        specs = self.specs or []
        for k, pos in enumerate(user):
            val = placeholders[pos].meta.get("example_value")
            real = args[pos]
            spec = specs[k] if k < len(specs) else None
            if spec is not None and not _fits(spec, real):
                # Specs match graph inputs by position; after a graph break a graph's inputs
                # are other tensors, so a spec that does not describe this one is ignored.
                log.info("options['inputs'][%d] %s does not describe tensor input %d of this "
                         "graph ('%s', shape %s): ignored for this graph", k, spec, k,
                         placeholders[pos].name, tuple(real.shape))
                spec = None
            dims = {}
            shape = val.shape if isinstance(val, torch.Tensor) else real.shape
            for d, s in enumerate(shape):
                if not isinstance(s, torch.SymInt):
                    if spec is not None and d in spec.dynamic_dims():
                        log.info("input %d dim %d is static in this Dynamo graph (Dynamo "
                                 "specializes the first call's shapes); its declared range "
                                 "applies once Dynamo makes it dynamic. Mark it with "
                                 "torch._dynamo.mark_dynamic or use ember.compile(..., "
                                 "ir='torch_compile') to get one engine from the first call",
                                 k, d)
                    continue
                expr = s.node.expr
                if expr.is_number:  # specialized by a guard (a weight's size, say)
                    continue
                if not expr.is_Symbol:
                    # A size Dynamo ties to another's (s0*2): no Dim says that; per shape.
                    log.info("input %d dim %d has the size expression %s: engines are built "
                             "per concrete shape", k, d, expr)
                    bounded = False
                    continue
                size = int(real.shape[d])
                if (spec is not None and d in spec.dynamic_dims()
                        and spec.min_shape[d] <= size <= spec.max_shape[d]):
                    lo, opt, hi = spec.min_shape[d], spec.opt_shape[d], spec.max_shape[d]
                else:  # no declared range, or Dynamo compiled this graph for a size outside it
                    lo, hi = _shape_env_range(s)
                    if hi is None:
                        bounded = False
                        log.info("input %d dim %d (%s) has no upper bound: engines are built "
                                 "per concrete shape; declare a range (options={'inputs': "
                                 "[ember.Input(min_shape=, opt_shape=, max_shape=)]} or "
                                 "torch._dynamo.mark_dynamic(x, %d, min=, max=)) to build "
                                 "one engine for all of them", k, d, expr, d)
                        continue
                    opt = min(max(size, lo), hi)
                dims[d] = (str(expr), lo, opt, hi)
            ranges.append(dims)
        return ranges, bounded

    # -- compiling
    def _kwargs(self) -> dict:
        kw = {f: getattr(self.settings, f) for f in self.settings.__dataclass_fields__}
        kw["device"] = self.device
        return kw

    def _compile(self, xs: list[torch.Tensor], dynamic: bool) -> torch.fx.GraphModule:
        try:
            return self._compile_unchecked(xs, dynamic)
        except (_Unsupported, TypeError) as e:  # TypeError: a bad setting, the user's to fix
            if isinstance(e, TypeError) and not str(e).startswith("ember"):
                raise _CompileFailed(f"{type(e).__name__}: {e}") from e
            raise
        except Exception as e:  # noqa: BLE001 - export or build failure: PyTorch runs it
            raise _CompileFailed(f"{type(e).__name__}: {e}") from e

    def _compile_unchecked(self, xs: list[torch.Tensor], dynamic: bool) -> torch.fx.GraphModule:
        specs, dyn, dims = [], [], {}
        for k, x in enumerate(xs):
            r = self.ranges[k] if dynamic else {}
            lo = [r[d][1] if d in r else s for d, s in enumerate(x.shape)]
            opt = [r[d][2] if d in r else s for d, s in enumerate(x.shape)]
            hi = [r[d][3] if d in r else s for d, s in enumerate(x.shape)]
            specs.append(Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=x.dtype))
            spec = {}
            for d, (sym, a, _, b) in r.items():
                # One torch.export.Dim per Dynamo symbol, so equal dims stay equal.
                if sym not in dims:
                    dims[sym] = torch.export.Dim(f"d_{sym}", min=a, max=b)
                spec[d] = dims[sym]
            dyn.append(spec or None)
        examples = [_example(x, self.ranges[k] if dynamic else {}) for k, x in enumerate(xs)]
        # Outside Dynamo's tracing context: torch.export would otherwise trace in the
        # caller's ShapeEnv and add its own guards to the frame Dynamo is compiling.
        with torch._guards.tracing(None), torch.no_grad():
            ep = torch.export.export(self.frozen, tuple(examples),
                                     dynamic_shapes=(tuple(dyn),) if dims else None, strict=False)
        sig = ep.graph_signature
        if sig.user_inputs_to_mutate or sig.buffers_to_mutate:
            raise _Unsupported("the graph mutates its inputs or buffers in place")
        report = dynamo.CompilationReport()
        gm = dynamo.compile(ep, specs, report=report, **self._kwargs())
        log.info("graph compiled (%s): %d engine(s), %d built, %d from the cache, %.2f s",
                 "declared ranges" if dynamic else "shapes " + ", ".join(
                     str(tuple(x.shape)) for x in xs), len(report.engines),
                 sum(not e["cached"] for e in report.engines),
                 sum(bool(e["cached"]) for e in report.engines), report.seconds)
        return gm

    def _static_for(self, xs: list[torch.Tensor]) -> Any:
        key = _shape_key(xs)
        gm = self.static.get(key)
        if gm is None:
            _count("shape_builds")
            gm = self.static[key] = self._compile(xs, dynamic=False)
        return gm

    # -- running
    def _in_range(self, xs) -> bool:
        for k, dims in enumerate(self.ranges):
            shape = xs[k].shape
            for d, (_, lo, _, hi) in dims.items():
                if not lo <= shape[d] <= hi:
                    return False
        return True

    def _stale(self, args) -> bool:
        """Whether a lifted parameter or buffer is another tensor than the one frozen into the
        engines, or was changed in place since. Runs on every call, so it is C-level iteration
        (about 0.1 us per tensor; ~30 us for BERT-base's 200 on a slow host core)."""
        current = self.weight_args(args)
        if any(map(operator.is_not, current, self.weight_tensors)):
            return True
        return list(map(self.version_of, current)) != self.weight_versions

    def __call__(self, *args):
        if self._stale(args):
            log.warning("parameters or buffers changed since this graph was compiled: "
                        "recompiling it with the new values")
            try:
                with self.lock:
                    self._setup(list(args))
            except _CompileFailed as e:
                if self.settings.pass_through_build_failures:
                    raise e.__cause__ from None
                log.warning("recompiling failed, this call runs in PyTorch: %s", e)
                return self.gm(*args)
        xs = [args[p] for p in self.user]
        if self.compiled is not None and self._in_range(xs):
            return self.compiled(*xs)
        try:
            with self.lock:
                gm = self._static_for(xs)
        except _CompileFailed as e:
            if self.settings.pass_through_build_failures:
                raise e.__cause__ from None
            log.warning("shapes %s failed to compile and run in PyTorch: %s",
                        [tuple(x.shape) for x in xs], e)
            self.static[_shape_key(xs)] = _PYTORCH  # don't retry on every call
            gm = _PYTORCH
        if gm is _PYTORCH:
            return self.gm(*args)
        return gm(*xs)


def _fits(spec: Input, x: torch.Tensor) -> bool:
    """Whether `x` could be the input `spec` describes: same rank and dtype, and the spec's
    static dims equal to x's (dynamic dims are checked against their range where used)."""
    if len(spec.min_shape) != x.dim() or spec.dtype != x.dtype:
        return False
    return all(lo == hi == size or lo != hi
               for lo, hi, size in zip(spec.min_shape, spec.max_shape, x.shape))


#: A shape that failed to compile: the Dynamo graph runs it in PyTorch.
_PYTORCH = object()


def _shape_key(xs: list[torch.Tensor]) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) for x in xs)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def _shape_env_range(s: torch.SymInt) -> tuple[int, int | None]:
    """Dynamo's range of a symbolic size (mark_dynamic's min/max land here); None: unbounded."""
    shape_env = s.node.shape_env
    vr = shape_env.var_to_range.get(s.node.expr) if shape_env is not None else None
    if vr is None:
        return 0, None
    def finite(v) -> int | None:
        # Only a sympy Integer is a bound; int_oo (torch's integer infinity) and oo are not.
        import sympy
        return int(v) if isinstance(v, (int, sympy.Integer)) else None

    lo = finite(vr.lower)
    return (lo if lo is not None else 0), finite(vr.upper)


def _example(x: torch.Tensor, dims: dict) -> torch.Tensor:
    """The tensor to trace with: `x` unless a dynamic dim is 0 or 1 (torch.export specializes
    those), then a tensor of the same dtype and device with that dim at min(2, max)."""
    shape = list(x.shape)
    changed = False
    # A new tensor object even when unchanged: torch.export annotates the tensors it traces,
    # and Dynamo's guards, still being built for the caller's tensor, must not see that.
    x = x.detach()
    for d, (_, lo, _, hi) in dims.items():
        if shape[d] < 2 <= hi:
            shape[d] = max(2, lo)
            changed = True
    if not changed:
        return x
    if x.dtype.is_floating_point:
        return torch.randn(shape, dtype=x.dtype, device=x.device)
    return torch.zeros(shape, dtype=x.dtype, device=x.device)


def register() -> None:
    """Registers "ember" with torch.compile (once; import ember does it)."""
    from torch._dynamo.backends import registry
    if "ember" in registry._COMPILER_FNS:
        return
    if registry._BACKENDS.get("ember") is not None:
        # The torch_dynamo_backends entry point was discovered and is being loaded (that load
        # imports ember): torch registers what it returns, a second registration would clash.
        return
    registry.register_backend(name="ember")(backend)


class _MarkDynamic(torch.nn.Module):
    """What ember.compile(..., ir="torch_compile") returns: calls the torch.compile'd module
    after marking each input's declared dynamic dims (torch._dynamo.mark_dynamic with the
    Input's min and max), so Dynamo's first graph is already dynamic over the whole range and
    no call inside it recompiles."""

    def __init__(self, module: torch.nn.Module, compiled: Callable, specs: list[Input]):
        super().__init__()
        self.module = module
        # Not a submodule: it wraps `module`, whose parameters must appear once in state_dict.
        self.__dict__["compiled"] = compiled
        self.specs = specs
        self.marks = [[(d, s.min_shape[d], s.max_shape[d]) for d in s.dynamic_dims()]
                      for s in specs]

    def forward(self, *args, **kwargs):
        for x, marks in zip(args, self.marks):
            if isinstance(x, torch.Tensor):
                for d, lo, hi in marks:
                    # Dynamo specializes sizes 0 and 1 (marking them is an error): such a call
                    # compiles one static graph, once.
                    if max(lo, 2) <= x.shape[d] <= hi:
                        torch._dynamo.mark_dynamic(x, d, min=max(lo, 2), max=hi)
        return self.compiled(*args, **kwargs)


def compile_module(module: torch.nn.Module, inputs: Sequence[Any] | None = None, *,
                   dynamic: bool | None = None, fullgraph: bool = False,
                   **kwargs) -> torch.nn.Module:
    """ember.compile(module, ir="torch_compile", inputs=..., **settings): the settings are
    validated now (not at the first call), then torch.compile(module, backend="ember",
    options={**settings, "inputs": inputs}). With dynamic ranges in `inputs`, the result marks
    them on every call (see _MarkDynamic); without, it is the torch.compile'd module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"ember.compile(ir='torch_compile'): expected an nn.Module, got "
                        f"{type(module).__name__}")
    options = dict(kwargs)
    if inputs is not None:
        options["inputs"] = list(inputs)
    _, specs = parse_options(options)  # raises now on an unknown or bad setting
    compiled = torch.compile(module, backend="ember", options=options, dynamic=dynamic,
                             fullgraph=fullgraph)
    if specs and any(s.is_dynamic() for s in specs):
        return _MarkDynamic(module, compiled, specs)
    return compiled

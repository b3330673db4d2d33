"""The converter test harness: compile a small module with Ember, compare with PyTorch eager.

    check_op(lambda a, b: a + b, [torch.randn(2, 3), torch.randn(3)], expect_ops={"aten::add.Tensor"})

Tolerances are per dtype, written once here (TOLERANCES) and never loosened to pass a test.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

import torch

import ember

#: Where check_op runs the engine and the eager reference: "cpu" (CI) or "cuda"
#: (EMBER_TEST_DEVICE=cuda on the GPU machine; eager then runs without TF32).
DEVICE = os.environ.get("EMBER_TEST_DEVICE", "cpu")

#: |actual - expected| <= atol + rtol * |expected|, against eager PyTorch in the same dtype.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
    torch.float64: (1e-4, 1e-4),  # runs as f32 inside engines (truncate_double)
}
DTYPES_FLOAT = [torch.float32, torch.float16, torch.bfloat16]
DTYPES_INT = [torch.int32, torch.int64]


class _Wrap(torch.nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def dynamic(*specs):
    """dynamic_shapes for a lambda under check_op: the harness wraps it in forward(*args)."""
    return (specs,)


def random_tensor(*shape, dtype=torch.float32):
    """Test data of any dtype: normal floats, integers in [-50, 50), random booleans."""
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if not dtype.is_floating_point:
        return torch.randint(-50, 50, shape, dtype=dtype)
    return torch.randn(shape, dtype=dtype)


def assert_close(actual: Any, expected: Any, where: str = "output") -> None:
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), (
            f"{where}: expected {len(expected)} outputs, got {actual!r}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{i}]")
        return
    if not isinstance(expected, torch.Tensor):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        return
    assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {type(actual)}"
    assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype in TOLERANCES:
        atol, rtol = TOLERANCES[expected.dtype]
        torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol,
                                   equal_nan=True, msg=lambda m: f"{where} ({expected.dtype}): {m}")
    else:
        assert torch.equal(actual, expected), f"{where}: values differ\n{actual}\n{expected}"


def check_op(fn: Callable | torch.nn.Module, inputs: Sequence[torch.Tensor], *,
             dynamic_shapes: Any = None, min_block_size: int = 1, require_full: bool = True,
             expect_ops: Iterable[str] | None = None, truncate_double: bool = False,
             extra_inputs: Sequence[Sequence[torch.Tensor]] = (), **settings) -> torch.fx.GraphModule:
    """Exports, compiles on the CPU back end, checks the op ran in an engine, compares with eager
    for `inputs` and every tuple in `extra_inputs` (other shapes inside the dynamic ranges)."""
    module = fn if isinstance(fn, torch.nn.Module) else _Wrap(fn)
    module = module.eval()
    inputs = tuple(inputs)
    if DEVICE != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        module = module.to(DEVICE)
        move = lambda xs: tuple(x.to(DEVICE) if isinstance(x, torch.Tensor) else x for x in xs)  # noqa: E731
        inputs = move(inputs)
        extra_inputs = [move(x) for x in extra_inputs]
    with _default_device():
        ep = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes)
    report = ember.dynamo.CompilationReport()
    compiled = ember.dynamo.compile(ep, list(inputs), device=DEVICE, min_block_size=min_block_size,
                                    require_full_compilation=require_full,
                                    truncate_double=truncate_double, report=report, **settings)
    if require_full:
        assert not report.fallback, f"nodes fell back to PyTorch:\n{report}"
        assert not report.build_failures, f"engine build failed:\n{report}"
        assert report.engines, f"no engine was built:\n{report}"
    if expect_ops:
        assert_ran_in_engine(ep, report, expect_ops)
    for args in (inputs, *map(tuple, extra_inputs)):
        with torch.no_grad(), _default_device():
            expected = module(*args)
            actual = compiled(*args)
        assert_close(actual, expected)
    return compiled


def compile_cpu(model, inputs, **kw):
    """`model` exported and compiled for the CPU back end; returns (module, report). The
    path-level tests (dynamo, extending, fallback accounting) share it."""
    report = ember.dynamo.CompilationReport()
    ep = torch.export.export(model.eval(), tuple(inputs))
    gm = ember.dynamo.compile(ep, list(inputs), device="cpu", report=report, **kw)
    return gm, report


def _default_device():
    """Factory functions inside test modules (torch.arange, torch.full) make tensors on DEVICE."""
    import contextlib
    return torch.device(DEVICE) if DEVICE != "cpu" else contextlib.nullcontext()


def assert_ran_in_engine(ep: torch.export.ExportedProgram, report: "ember.dynamo.CompilationReport",
                         ops: Iterable[str]) -> None:
    """Each op in `ops` is in the decomposed graph, none of its nodes runs in PyTorch, and a node
    of it is inside a built engine (by op, or by the FX node it came from when lowering renamed
    it) or every node of it was evaluated at compile time (lowering folded it into a constant
    through its converter, or removed it as a no-op). An op that legitimately falls back is
    tested with check_fallback instead."""
    decomposed = _decomposed_nodes(ep)
    in_engines_ops = {op for e in report.engines for op in e["ops"]}
    in_engines_fx = {name for e in report.engines for name in e["fx_nodes"]}
    in_pytorch = {name for name, _, _ in report.fallback}
    lowered_away = set(report.lowered_away)
    for op in ops:
        nodes = [name for name, key in decomposed if key == op]
        assert nodes, (f"expected op {op} in the decomposed graph, got "
                       f"{sorted({key for _, key in decomposed})}")
        fell_back = [name for name in nodes if name in in_pytorch]
        assert not fell_back, f"{op} ran in PyTorch ({fell_back}), not in an engine:\n{report}"
        assert op in in_engines_ops or any(name in in_engines_fx for name in nodes) or all(
            name in lowered_away for name in nodes), (
            f"{op} is in the decomposed graph ({nodes}) but in no engine; engines hold "
            f"{sorted(in_engines_ops)}:\n{report}")


def _decomposed_nodes(ep: torch.export.ExportedProgram) -> list[tuple[str, str]]:
    from ember._settings import op_key
    dec = ep.run_decompositions(ember.dynamo.decomposition_table())
    return [(n.name, op_key(n.target)) for n in dec.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]

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
        converted = set()
        for line in _engine_ops(ep):
            converted.add(line)
        missing = set(expect_ops) - converted
        assert not missing, f"expected ops {sorted(missing)} in the decomposed graph, got {sorted(converted)}"
    for args in (inputs, *map(tuple, extra_inputs)):
        with torch.no_grad(), _default_device():
            expected = module(*args)
            actual = compiled(*args)
        assert_close(actual, expected)
    return compiled


def _default_device():
    """Factory functions inside test modules (torch.arange, torch.full) make tensors on DEVICE."""
    import contextlib
    return torch.device(DEVICE) if DEVICE != "cpu" else contextlib.nullcontext()


def _engine_ops(ep: torch.export.ExportedProgram) -> list[str]:
    from ember._settings import op_key
    dec = ep.run_decompositions(ember.dynamo.decomposition_table())
    return [op_key(n.target) for n in dec.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]

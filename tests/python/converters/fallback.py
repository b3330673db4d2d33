"""check_fallback: a node a validator rejects runs in PyTorch and the program stays correct."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

import ember
from harness import _Wrap, assert_close


def check_fallback(fn: Callable, inputs: Sequence[torch.Tensor], op: str,
                   device: str = "cpu") -> None:
    """Compiles for `device` (inputs are moved there) allowing fallback; asserts that a node
    whose target mentions `op` ran in PyTorch and that the result still matches eager."""
    module = _Wrap(fn).eval()
    inputs = [x.to(device) for x in inputs]
    ep = torch.export.export(module, tuple(inputs))
    report = ember.dynamo.CompilationReport()
    compiled = ember.dynamo.compile(ep, list(inputs), device=device, min_block_size=1,
                                    report=report)
    assert any(op in str(entry) for entry in report.fallback), (
        f"expected {op} to fall back to PyTorch:\n{report}")
    with torch.no_grad():
        assert_close(compiled(*inputs), module(*inputs))

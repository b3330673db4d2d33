"""What the vision and transformers zoo tables share: flattening outputs, the cosine measure and
the rule for which nodes left to PyTorch count as fallback."""

from __future__ import annotations

from typing import Any

import torch

import ember

#: Nodes that are not imported because their result is not a tensor (shape arithmetic, runtime
#: asserts): PyTorch runs them by design, so they are no fallback.
HARMLESS_SKIPS = frozenset({
    "aten::_assert_tensor_metadata", "aten::_assert_scalar", "aten::sym_size.int",
    "aten::sym_numel", "aten::sym_stride.int", "aten::sym_storage_offset",
})


def flat_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, tuple, list, dict, HF ModelOutput), in order,
    Nones dropped."""
    if isinstance(out, torch.Tensor):
        return [out]
    if out is None:
        return []
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    elif isinstance(out, dict):
        out = tuple(out.values())
    result: list[torch.Tensor] = []
    for o in out:
        result += flat_outputs(o)
    return result


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity in f64. Not torch's cosine_similarity: it clamps the norms' product
    to eps=1e-8, which reads as ~0 for outputs of magnitude 1e-12 that match perfectly."""
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = a.norm().item(), b.norm().item()
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return (a @ b).item() / (na * nb)


def fallback_lines(report: "ember.dynamo.CompilationReport") -> list[str]:
    """"op: reason" for every node left to PyTorch (not imported, or not in an engine, or in a
    segment whose build failed), harmless non-tensor nodes left out."""
    lines = [f"{op}: {why}" for _, op, why in report.fallback]
    lines += [f"{op}: {why}" for _, op, why in report.skipped if op not in HARMLESS_SKIPS]
    lines += [f"engine segment {seg}: build failed: {why}" for seg, why in report.build_failures]
    return lines

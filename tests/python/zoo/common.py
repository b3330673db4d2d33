"""What the vision and transformers zoo tables share: flattening outputs, the cosine measure and
the rule for which nodes left to PyTorch count as fallback."""

from __future__ import annotations

import os
from typing import Any

import torch

import ember

#: Where the zoo runs: "cpu" (CI) or "cuda" (EMBER_TEST_DEVICE=cuda on the GPU machine, where the
#: eager reference runs on the GPU too, without TF32).
DEVICE = os.environ.get("EMBER_TEST_DEVICE", "cpu")


def to_device(model: torch.nn.Module, inputs: tuple) -> tuple[torch.nn.Module, tuple]:
    """The model and its tensor inputs on DEVICE (a no-op on the CPU)."""
    if DEVICE == "cpu":
        return model, inputs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return model.to(DEVICE), tuple(x.to(DEVICE) if isinstance(x, torch.Tensor) else x
                                   for x in inputs)


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
    """"op: reason" for every node left to PyTorch (report.fallback: not in an engine, not
    imported, re-run after lowering), with one line per failed engine build instead of one per
    node of its segment."""
    lines = [f"{op}: {why}" for _, op, why in report.fallback
             if not why.startswith("engine segment ")]
    lines += [f"engine segment {seg}: build failed: {why}" for seg, why in report.build_failures]
    return lines

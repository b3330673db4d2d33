"""The vision model zoo: torchvision models (random weights) compiled through Ember on the CPU
back end and compared with eager PyTorch in f32.

    from zoo import vision
    for entry in vision.ENTRIES.values():
        print(vision.run(entry))

`run(entry)` returns {"model", "compiled", "engines", "fallback", "cosine", "max_error",
"compile_seconds"}: the row format shared with zoo/hf.py that tools/zoo.py turns into docs/zoo.md.

Random weights alone make poor test signals: a BatchNorm in eval mode with fresh running stats
(mean 0, var 1) is an identity, so activations shrink or grow layer after layer (MobileNetV3's
logits come out near 1e-10, EfficientNet-B0's near 1e-13), and some heads start at zero (ViT's classifier: every logit is 0).
`prepare` therefore re-initializes all-zero weights and estimates every BatchNorm's running
stats from one random batch, like a trained network's: outputs are then O(1) and their error
means something. (Ember matches eager on the raw models too, to cosine 1 - 1e-12: `cosine`
below is computed so that tiny outputs are judged fairly.)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

import ember
from zoo.common import (  # noqa: F401 (re-exported)
    DEVICE, cosine, fallback_lines, flat_outputs, to_device)

#: Every output must have a cosine similarity above this against eager f32...
MIN_COSINE = 0.9999
#: ...and a max |compiled - eager| at most this times max(1, max |eager|): outputs are O(1)
#: after `prepare`, but some heads (Inception v3's, EfficientNet's) reach ~100.
MAX_ERROR = 1e-3

@dataclasses.dataclass(frozen=True)
class Entry:
    """One zoo model: how to build it and the example inputs it is compiled for."""

    name: str
    make: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...]
    #: "op: reason" of every node that is expected to run in PyTorch, with why.
    expected_fallback: tuple[str, ...] = ()

    def inputs(self) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(1)
        return (torch.randn(*self.input_shape, generator=g),)


def _tv():
    import torchvision
    return torchvision.models


def _deeplab():
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False)


_IMAGE = (2, 3, 64, 64)

ENTRIES: dict[str, Entry] = {e.name: e for e in [
    Entry("resnet50", lambda: _tv().resnet50(weights=None), _IMAGE),
    Entry("mobilenet_v3_large", lambda: _tv().mobilenet_v3_large(weights=None), _IMAGE),
    Entry("efficientnet_b0", lambda: _tv().efficientnet_b0(weights=None), _IMAGE),
    Entry("convnext_tiny", lambda: _tv().convnext_tiny(weights=None), _IMAGE),
    # image_size is a builder argument: 64x64 images make 16 patches of 16x16.
    Entry("vit_b_16", lambda: _tv().vit_b_16(weights=None, image_size=64), _IMAGE),
    Entry("swin_t", lambda: _tv().swin_t(weights=None), _IMAGE),
    Entry("regnet_y_400mf", lambda: _tv().regnet_y_400mf(weights=None), _IMAGE),
    Entry("densenet121", lambda: _tv().densenet121(weights=None), _IMAGE),
    # 75x75 is the smallest input Inception v3's stem and reductions accept.
    Entry("inception_v3",
          lambda: _tv().inception_v3(weights=None, aux_logits=False, init_weights=False),
          (2, 3, 75, 75)),
    Entry("deeplabv3_mobilenet_v3_large", _deeplab, _IMAGE),
]}


@torch.no_grad()
def prepare(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """Makes a randomly initialized model a meaningful test subject (see the module docstring);
    returns it in eval mode. Deterministic for a given seed."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not torch.any(w):
            torch.nn.init.normal_(w, std=0.02)
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch gives its exact statistics
            m.train()
        g = torch.Generator().manual_seed(2)
        shape = (max(4, inputs[0].shape[0]), *inputs[0].shape[1:])
        model(torch.randn(*shape, generator=g))
        model.eval()
    return model


def run(entry: Entry) -> dict:
    """Builds, prepares, compiles (CPU back end) and compares one model with eager f32: the
    zoo row {"model", "compiled", "engines", "fallback", "cosine", "max_error",
    "compile_seconds"}. cosine is the lowest over the outputs, max_error the largest
    |compiled - eager| over them."""
    return evaluate(entry)[0]


def evaluate(entry: Entry) -> tuple[dict, float]:
    """run()'s row, and the largest |eager output| (the scale max_error is judged against)."""
    torch.manual_seed(0)
    inputs = entry.inputs()
    model = prepare(entry.make(), inputs)
    model, inputs = to_device(model, inputs)
    report = ember.dynamo.CompilationReport()
    row = {"model": entry.name, "compiled": False, "engines": 0, "fallback": [],
           "cosine": None, "max_error": None, "compile_seconds": None}
    start = time.perf_counter()
    try:
        compiled = ember.compile(model, inputs=list(inputs), device=DEVICE, report=report)
    except Exception as e:  # the row says why; the test fails on compiled=False
        row["fallback"] = [f"compile: {type(e).__name__}: {e}"]
        return row, 0.0
    row["compile_seconds"] = round(time.perf_counter() - start, 2)
    row["compiled"] = True
    row["engines"] = len(report.engines)
    row["fallback"] = fallback_lines(report)
    with torch.no_grad():
        expected = flat_outputs(model(*inputs))
        actual = flat_outputs(compiled(*inputs))
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        row["fallback"].append(
            f"outputs: shapes {[tuple(a.shape) for a in actual]} != "
            f"{[tuple(e.shape) for e in expected]}")
        return row, 0.0
    row["cosine"] = min(cosine(a, e) for a, e in zip(actual, expected))
    row["max_error"] = max((a - e).abs().max().item() for a, e in zip(actual, expected))
    return row, max(e.abs().max().item() for e in expected)

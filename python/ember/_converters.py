"""ember.load_converters: converters from a user's shared library (docs/adding_a_converter.md)."""

from __future__ import annotations

import os

import torch

from ember import _runtime


def load_converters(path: str) -> list[str]:
    """Loads a shared library whose converters register with EMBER_CONVERTER (and whose custom
    ops register with TORCH_LIBRARY) and returns the converter keys it added. The library links
    libember_torch.so, which is loaded first so both share one converter registry; its
    converters take part in partitioning on the TorchScript path (ember.ts, ir="ts")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ember.load_converters: no file at '{path}'")
    _runtime.load_library()
    before = set(torch.ops.ember.converter_ops())
    torch.ops.load_library(path)
    return sorted(set(torch.ops.ember.converter_ops()) - before)

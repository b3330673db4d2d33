"""ember.compile, ember.save and ember.load."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import torch

from ember import _runtime, dynamo


def compile(module: Any, ir: str = "dynamo", inputs: Sequence[Any] | None = None,
            **kwargs) -> torch.fx.GraphModule:
    """Compiles an nn.Module (or an ExportedProgram) with the given frontend.

    ir="dynamo" (default): torch.export with ranges from the ember.Input specs, then
    ember.dynamo.compile. ir="ts": the TorchScript path (ember.ts.compile) on a ScriptModule, or
    on an nn.Module scripted with torch.jit.script (traced when scripting fails, with a
    warning). Keyword arguments are CompileSettings fields."""
    if ir in ("ts", "torchscript"):
        from ember import ts
        if not inputs:
            raise ValueError("ember.compile: inputs= is required (tensors or ember.Input specs)")
        return ts.compile(ts.script_or_trace(module, inputs), inputs, **kwargs)
    if ir not in ("dynamo", "default"):
        raise ValueError(f"ember.compile: ir='{ir}' is not supported (use ir='dynamo' or ir='ts')")
    if isinstance(module, torch.export.ExportedProgram):
        return dynamo.compile(module, inputs, **kwargs)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"ember.compile: expected an nn.Module or ExportedProgram, got {type(module).__name__}")
    if not inputs:
        raise ValueError("ember.compile: inputs= is required (tensors or ember.Input specs)")
    ep = dynamo.trace(module, inputs)
    return dynamo.compile(ep, inputs, **kwargs)


def save(compiled: torch.fx.GraphModule, path: str, output_format: str = "exported_program",
         inputs: Sequence[Any] | None = None) -> None:
    """Saves a compiled program. output_format="exported_program": re-exported with
    torch.export (engines travel inside, as pickled ember.Engine objects) and written with
    torch.export.save. `inputs` (tensors or ember.Input) give the example shapes and dynamic
    ranges. The file is written to a temporary name first, so a failure leaves no partial file."""
    if output_format != "exported_program":
        raise ValueError(f"ember.save: output_format='{output_format}' is not supported "
                         "(use 'exported_program')")
    if not inputs:
        raise ValueError("ember.save: inputs= is required to re-export the compiled program")
    _runtime.load_library()
    ep = torch.export.export(compiled, dynamo._examples(inputs, dynamo._module_device(compiled)),
                             dynamic_shapes=dynamo._dynamic_shapes(inputs), strict=False)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ember-save-", suffix=".pt2")
    os.close(fd)
    try:
        torch.export.save(ep, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str) -> torch.export.ExportedProgram:
    """Loads a program saved by ember.save; call .module() on the result to run it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"ember.load: no file at '{path}'")
    _runtime.load_library()
    return torch.export.load(path)

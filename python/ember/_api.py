"""ember.compile, ember.save and ember.load."""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any, Sequence

import torch

from ember import _runtime, dynamo


def compile(module: Any, ir: str = "dynamo", inputs: Sequence[Any] | None = None,
            **kwargs) -> torch.fx.GraphModule:
    """Compiles an nn.Module (or an ExportedProgram) with the given frontend.

    ir="dynamo" (default): torch.export with ranges from the ember.Input specs, then
    ember.dynamo.compile. Keyword arguments are CompileSettings fields."""
    if ir not in ("dynamo", "default"):
        raise ValueError(f"ember.compile: ir='{ir}' is not supported (use ir='dynamo')")
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


def load(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Loads a program saved by ember.save; call .module() on the result to run it.

    A file that is not a saved program (a torch.save checkpoint, a plan, anything else) is a
    ValueError naming the file and what it is expected to be."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"ember.load: no file at '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"ember.load: '{path}' is a directory; expected a .pt2 file "
                                "written by ember.save")
    expected = ("expected a program written by ember.save (a torch.export .pt2 archive); "
                "checkpoints from torch.save load with torch.load, and engine plans with "
                "ember.Engine")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise ValueError(f"ember.load: '{path}' is not a saved program: it is not a zip archive "
                         f"(it starts with {head!r}); {expected}")
    _runtime.load_library()
    try:
        return torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"ember.load: '{path}' is not a saved program ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); {expected}") from e

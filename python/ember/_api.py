"""ember.compile, ember.save and ember.load."""

from __future__ import annotations

import logging
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
    ember.dynamo.compile. ir="ts": the TorchScript path (ember.ts.compile) on a ScriptModule, or
    on an nn.Module scripted with torch.jit.script (traced when scripting fails, with a
    warning). ir="torch_compile": torch.compile(module, backend="ember") with the settings as
    options, its dynamic dims marked from the Input ranges on every call (see
    docs/torch_compile.md). Keyword arguments are CompileSettings fields."""
    if ir in ("ts", "torchscript"):
        from ember import ts
        if not inputs:
            raise ValueError("ember.compile: inputs= is required (tensors or ember.Input specs)")
        return ts.compile(ts.script_or_trace(module, inputs), inputs, **kwargs)
    if ir == "torch_compile":
        from ember._backend import compile_module
        return compile_module(module, inputs, **kwargs)
    if ir not in ("dynamo", "default"):
        raise ValueError(f"ember.compile: ir='{ir}' is not supported (use ir='dynamo', ir='ts' "
                         "or ir='torch_compile')")
    if isinstance(module, torch.export.ExportedProgram):
        return dynamo.compile(module, inputs, **kwargs)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"ember.compile: expected an nn.Module or ExportedProgram, got {type(module).__name__}")
    if not inputs:
        raise ValueError("ember.compile: inputs= is required (tensors or ember.Input specs)")
    ep = dynamo.trace(module, inputs)
    return dynamo.compile(ep, inputs, **kwargs)


def save(compiled: Any, path: str, output_format: str = "exported_program",
         inputs: Sequence[Any] | None = None) -> None:
    """Saves a compiled program. output_format="exported_program": re-exported with
    torch.export (engines travel inside, as pickled ember.Engine objects) and written with
    torch.export.save. output_format="torchscript": a ScriptModule (ember.ts / ir="ts") is
    written with torch.jit.save; a dynamo result (a GraphModule) is first traced with
    torch.jit.trace on example inputs (shapes outside its engines are then fixed to those of the
    examples), so every compiled program can be deployed to C++ (docs/deployment.md). `inputs`
    (tensors or ember.Input) give the example shapes and dynamic ranges. The file is written to
    a temporary name first, so a failure leaves no partial file."""
    if output_format not in ("exported_program", "torchscript"):
        raise ValueError(f"ember.save: output_format='{output_format}' is not supported "
                         "(use 'exported_program' or 'torchscript')")
    _runtime.load_library()
    if output_format == "torchscript":
        if isinstance(compiled, torch.jit.ScriptModule):
            module = compiled
        else:
            if not inputs:
                raise ValueError("ember.save(output_format='torchscript'): inputs= is required to "
                                 "trace a dynamo result")
            examples = dynamo._examples(inputs, dynamo._module_device(compiled))
            with torch.no_grad():
                module = torch.jit.trace(compiled, examples, check_trace=False)
        _write_atomically(path, ".ts", lambda tmp: torch.jit.save(module, tmp))
        return
    if isinstance(compiled, torch.jit.ScriptModule):
        raise ValueError("ember.save: a TorchScript result saves with output_format='torchscript'")
    if not inputs:
        raise ValueError("ember.save: inputs= is required to re-export the compiled program")
    ep = torch.export.export(compiled, dynamo._examples(inputs, dynamo._module_device(compiled)),
                             dynamic_shapes=dynamo._dynamic_shapes(inputs), strict=False)
    _write_atomically(path, ".pt2", lambda tmp: torch.export.save(ep, tmp))


def _write_atomically(path: str, suffix: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ember-save-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_torchscript_file(path: str) -> bool:
    """torch.jit.save archives hold code/ and constants.pkl; torch.export.save's do not."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load(path: str | os.PathLike) -> Any:
    """Loads a program saved by ember.save: an ExportedProgram (call .module() on it to run it),
    or for a TorchScript file a ScriptModule.

    A file that is not a saved program (a torch.save checkpoint, a plan, anything else) is a
    ValueError naming the file and what it is expected to be."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"ember.load: no file at '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"ember.load: '{path}' is a directory; expected a .pt2 file "
                                "written by ember.save")
    expected = ("expected a program written by ember.save (a torch.export .pt2 archive or a "
                "TorchScript file); "
                "checkpoints from torch.save load with torch.load, and engine plans with "
                "ember.Engine")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise ValueError(f"ember.load: '{path}' is not a saved program: it is not a zip archive "
                         f"(it starts with {head!r}); {expected}")
    _runtime.load_library()
    if _is_torchscript_file(path):
        return torch.jit.load(path)
    # torch.export.load logs the first deserialization error (an engine's plan that fails to
    # load, e.g. one naming a plugin this process lacks) and raises a generic one afterwards:
    # keep the logged error so that it, not "not a saved program", reaches the caller.
    engine_errors: list[BaseException] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and ("plan: " in str(exc) or "ember" in str(exc).lower()):
                engine_errors.append(exc)

    keep = _Keep(level=logging.WARNING)
    export_log = logging.getLogger("torch.export")
    export_log.addHandler(keep)
    try:
        return torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        if engine_errors:
            raise RuntimeError(f"ember.load: '{path}': an engine in it cannot be loaded in this "
                               f"process: {engine_errors[0]}") from engine_errors[0]
        raise ValueError(f"ember.load: '{path}' is not a saved program ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); {expected}") from e
    finally:
        export_log.removeHandler(keep)

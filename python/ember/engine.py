"""Loading and running Ember plans from Python (the engine runtime, without PyTorch)."""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from ember import _C

_NUMPY_DTYPES = {
    "f32": np.float32,
    "f16": np.float16,
    "i8": np.int8,
    "u8": np.uint8,
    "i32": np.int32,
    "i64": np.int64,
    "bool": np.bool_,
}


def available_backends() -> list[str]:
    """Back ends compiled into this build ("cpu", and "cuda" when built with CUDA)."""
    return list(_C.available_backends())


class Engine:
    """A deserialized plan. `run` executes it on host (numpy) arrays with the CPU back end.

    Errors from the engine (a corrupted plan, a shape outside the optimization profile, a dtype
    mismatch) raise `ember.engine.EngineError` with the engine's message.
    """

    def __init__(self, plan: bytes):
        self._engine = _C.Engine(plan)

    @classmethod
    def from_file(cls, path: str) -> "Engine":
        with open(path, "rb") as f:
            return cls(f.read())

    @property
    def backend(self) -> str:
        return self._engine.backend()

    def io_tensors(self) -> list[dict]:
        """Inputs then outputs: name, dtype, symbolic shape, is_input."""
        return [
            {"name": n, "dtype": d, "shape": s, "is_input": i} for n, d, s, i in self._engine.io()
        ]

    def inspect(self) -> dict:
        """Per-layer information (name, type, implementation, tensors, parameters)."""
        return json.loads(self._engine.inspect_json())

    def timing_cache(self) -> bytes:
        """The engine's timing cache as bytes: the plan's tactic choices plus any timed by
        calls since (a "cuda" engine times each new problem on its first call). The bytes are
        what a `timing_cache` file holds (ember._C.TimingCache.from_bytes reads them)."""
        return self._engine.timing_cache()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the engine; inputs by name, converted to C-contiguous arrays of the engine's
        dtype only when they already have it (no silent casts)."""
        arrays = {}
        for io in self.io_tensors():
            if not io["is_input"]:
                continue
            if io["name"] not in inputs:
                raise EngineError(f"missing input '{io['name']}'")
            a = np.ascontiguousarray(inputs[io["name"]])
            want = _NUMPY_DTYPES.get(io["dtype"])
            if want is None or a.dtype != want:
                raise EngineError(
                    f"input '{io['name']}' must be {io['dtype']}, got numpy {a.dtype}"
                )
            arrays[io["name"]] = a
        outs = self._engine.run(arrays)
        return {name: np.frombuffer(buf, dtype=_NUMPY_DTYPES[dt]).reshape(dims)
                for name, (buf, dt, dims) in outs.items()}


EngineError = _C.EngineError

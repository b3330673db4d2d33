"""ember.Input: an input's shape (static or a min/opt/max range), dtype and name."""

from __future__ import annotations

from typing import Sequence

import torch


class Input:
    """Describes one model input, as torch_tensorrt.Input does.

    Static: ``Input(shape=(1, 3, 224, 224), dtype=torch.float16)``.
    Dynamic: ``Input(min_shape=(1, 128), opt_shape=(8, 128), max_shape=(32, 128), dtype=torch.int64)``:
    dims where min and max differ are dynamic; the engine runs any shape in the range without
    rebuilding and is tuned for ``opt_shape``.
    """

    def __init__(self, shape: Sequence[int] | None = None, *, min_shape: Sequence[int] | None = None,
                 opt_shape: Sequence[int] | None = None, max_shape: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float32, name: str | None = None):
        if shape is not None:
            if any(s is not None for s in (min_shape, opt_shape, max_shape)):
                raise ValueError("ember.Input: give either shape= or min_shape/opt_shape/max_shape, not both")
            min_shape = opt_shape = max_shape = shape
        if min_shape is None or max_shape is None:
            raise ValueError("ember.Input: needs shape=, or min_shape= and max_shape= (opt_shape optional)")
        if opt_shape is None:
            opt_shape = min_shape
        self.min_shape = tuple(int(d) for d in min_shape)
        self.opt_shape = tuple(int(d) for d in opt_shape)
        self.max_shape = tuple(int(d) for d in max_shape)
        if not len(self.min_shape) == len(self.opt_shape) == len(self.max_shape):
            raise ValueError(f"ember.Input{self._where(name)}: min/opt/max shapes have different ranks: "
                             f"{self.min_shape}, {self.opt_shape}, {self.max_shape}")
        for d, (lo, opt, hi) in enumerate(zip(self.min_shape, self.opt_shape, self.max_shape)):
            if not 0 <= lo <= opt <= hi:
                raise ValueError(f"ember.Input{self._where(name)}: dim {d} needs 0 <= min <= opt <= max, "
                                 f"got {lo}, {opt}, {hi}")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"ember.Input{self._where(name)}: dtype must be a torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.name = name

    @staticmethod
    def _where(name):
        return f" '{name}'" if name else ""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.opt_shape

    def is_dynamic(self) -> bool:
        return self.min_shape != self.max_shape

    def dynamic_dims(self) -> list[int]:
        return [d for d, (lo, hi) in enumerate(zip(self.min_shape, self.max_shape)) if lo != hi]

    def example(self, which: str = "opt") -> torch.Tensor:
        """A random tensor of the opt (or min/max) shape, for tracing and tests."""
        shape = {"min": self.min_shape, "opt": self.opt_shape, "max": self.max_shape}[which]
        if self.dtype.is_floating_point:
            return torch.randn(shape, dtype=self.dtype)
        if self.dtype == torch.bool:
            return torch.rand(shape) > 0.5
        return torch.randint(0, 8, shape, dtype=self.dtype)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, name: str | None = None) -> "Input":
        return cls(shape=tuple(t.shape), dtype=t.dtype, name=name)

    def __repr__(self) -> str:
        if not self.is_dynamic():
            return f"Input(shape={self.min_shape}, dtype={self.dtype})"
        return (f"Input(min_shape={self.min_shape}, opt_shape={self.opt_shape}, "
                f"max_shape={self.max_shape}, dtype={self.dtype})")

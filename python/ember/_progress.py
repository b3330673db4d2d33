"""Build progress: engines built / total, the current segment's size, elapsed time.

Shown with tqdm (a maintained progress-bar library, already installed with transformers) when
stderr is a TTY and the "ember.build" logger is enabled for INFO; otherwise nothing is drawn
and the same facts go to the logger as records. A missing tqdm only means no bar.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ember.logging import get_logger

try:  # optional: no tqdm, no bar
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm comes with transformers in our environment
    _tqdm = None

log = get_logger("build")


def _wants_bar() -> bool:
    if _tqdm is None or not log.isEnabledFor(logging.INFO):
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class BuildProgress:
    """One compile's engine builds. `step(nodes)` before each build, `done(seconds, cached)`
    after it; `close()` at the end (also as a context manager)."""

    def __init__(self, total: int, what: str = "ember: building engines"):
        self.total = total
        self.start = time.perf_counter()
        self.count = 0
        self.bar: Any = None
        if total > 0 and _wants_bar():
            self.bar = _tqdm(total=total, desc=what, unit="engine", leave=False,
                             file=sys.stderr, dynamic_ncols=True)

    def step(self, index: int, nodes: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"segment {index}: {nodes} nodes")

    def done(self, index: int, nodes: int, seconds: float, cached: bool) -> None:
        self.count += 1
        how = "loaded from the engine cache" if cached else f"built in {seconds:.2f} s"
        log.info("engine %d/%d (segment %d, %d nodes) %s; %.1f s elapsed", self.count,
                 self.total, index, nodes, how, time.perf_counter() - self.start)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "BuildProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

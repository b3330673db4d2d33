"""Ember's logging: one `logging.getLogger("ember")` hierarchy, and context managers that set
its level for a block (as `torch_tensorrt.logging.debug()` does).

    import logging, ember
    logging.getLogger("ember").setLevel(logging.INFO)   # build times, cache hits, progress
    with ember.logging.debug():                          # everything, for one block
        compiled = ember.compile(model, inputs=inputs)

Loggers (children of "ember"):

- ``ember.partition``: the partition report, the nodes left to PyTorch and why (INFO, and the
  fallback reasons at INFO; the full report at DEBUG when nothing falls back);
- ``ember.build``: engine builds (INFO: segment size and build time; DEBUG: the builder's pass
  log, i.e. the C++ messages a build returns);
- ``ember.cache``: engine cache hits, misses, writes, evictions and rejected entries;
- ``ember.torch_compile``: the torch.compile backend (graphs received, fallbacks, shapes).

Ember adds no handler to the root logger. In a script that never configured logging, records
at WARNING and above still reach stderr through Python's last-resort handler. The context
managers below and ``debug=True`` attach a stderr handler to "ember" for their block unless a
handler up the hierarchy already prints to the terminal, so DEBUG/INFO records are seen and
never printed twice; capturing handlers (pytest's, files) still receive every record.
"""

from __future__ import annotations

import contextlib
import logging as _logging
import sys
import threading
from typing import Iterator

__all__ = ["logger", "get_logger", "debug", "info", "warnings", "errors", "set_level", "Counters"]

#: The root of Ember's loggers.
logger = _logging.getLogger("ember")


def get_logger(name: str) -> _logging.Logger:
    """The child logger "ember.<name>"."""
    return logger.getChild(name)


class _StderrHandler(_logging.Handler):
    """Writes to the current sys.stderr at emit time (pytest's capture and notebooks swap it)."""

    def emit(self, record: _logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into the compile
            self.handleError(record)


def _shown(log: _logging.Logger) -> bool:
    """Whether records of `log` reach a handler that prints them on the terminal (a stream
    handler on stdout or stderr). Capturing handlers (pytest's, a file) don't count: the
    records still reach them, and the block also shows them on stderr."""
    terminals = {id(s) for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)}
    current: _logging.Logger | None = log
    while current is not None:
        for h in current.handlers:
            if isinstance(h, _StderrHandler) or (isinstance(h, _logging.StreamHandler)
                                                 and id(h.stream) in terminals):
                return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


@contextlib.contextmanager
def _level(level: int) -> Iterator[_logging.Logger]:
    old = logger.level
    handler = None
    if not _shown(logger):
        handler = _StderrHandler()
        handler.setFormatter(_logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.setLevel(old)
        if handler is not None:
            logger.removeHandler(handler)


def debug() -> contextlib.AbstractContextManager:
    """Everything for the block: partition report, build pass logs, cache keys."""
    return _level(_logging.DEBUG)


def info() -> contextlib.AbstractContextManager:
    """Build times, cache hits and misses, fallback reasons, and build progress on a TTY."""
    return _level(_logging.INFO)


def warnings() -> contextlib.AbstractContextManager:
    """Only what degrades silently otherwise (a build failure, a rejected cache entry)."""
    return _level(_logging.WARNING)


def errors() -> contextlib.AbstractContextManager:
    """Errors only."""
    return _level(_logging.ERROR)


def set_level(level: int | str) -> None:
    """Sets the "ember" logger's level (logging.INFO or "INFO") for the rest of the process."""
    logger.setLevel(level)


class Counters:
    """Named event counters of one module, safe to bump from several threads: what the
    `stats()` / `reset_stats()` functions of the torch.compile backend and the engine cache
    report (tests assert on them)."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            for k in self._counts:
                self._counts[k] = 0

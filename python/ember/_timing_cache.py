"""The `timing_cache` compile setting: load the file into an ember._C.TimingCache before the
builds, write it back atomically after them."""

from __future__ import annotations

import os
import tempfile
from typing import Any


def load(path: str | os.PathLike | None) -> Any:
    """The cache in `path` (an empty one when the file does not exist yet), or None for None."""
    if path is None:
        return None
    from ember import _C
    path = os.fspath(path)
    if not os.path.exists(path):
        return _C.TimingCache()
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _C.TimingCache.from_bytes(data)
    except RuntimeError as e:
        raise ValueError(f"ember: timing_cache file '{path}' cannot be loaded ({e}); delete it "
                         "to start a new one") from None


def save(cache: Any, path: str | os.PathLike | None) -> None:
    """Writes `cache` to `path` through a temporary file in the same folder and a rename, so
    readers (and a crash) never see a half-written file."""
    if cache is None or path is None:
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"ember: timing_cache file '{path}' cannot be written: its folder "
                         f"'{directory}' does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ember-timing-", suffix=".tmp")
    try:
        # mkstemp makes the file 0600: keep an existing cache's mode, else the usual umask one.
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(cache.serialize())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

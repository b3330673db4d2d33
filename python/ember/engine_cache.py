"""The engine cache: built plans stored by a key that covers everything that changes them, so a
second compile of the same model (in this process or another) builds nothing.

Every path builds through `cached_build`: ember.dynamo.compile (and so ember.compile and
torch.compile(backend="ember")) through `build_segment`, the TorchScript path (ember.ts) with
the steps of its C++ compilation object (torch.classes.ember.TSCompilation). Both compute the
key from the same C++ function (compiler::segment_fingerprint) and the recipe below.

Settings (CompileSettings fields, Torch-TensorRT's names):

- ``cache_built_engines``: store every plan built (default False);
- ``reuse_cached_engines``: load a stored plan instead of building (default False);
- ``engine_cache_dir``: the folder of the default disk cache (default
  ``$XDG_CACHE_HOME/ember/engines``, i.e. ``~/.cache/ember/engines``);
- ``engine_cache_size``: the disk cache's size limit in bytes; least recently used entries go
  first (default 5 GiB);
- ``custom_engine_cache``: an object with ``save(key, blob)`` and ``load(key)`` (see
  `EngineCache`) used instead of the disk cache.

The key (`engine_key`) is the SHA-256 of a JSON description made of: the segment's canonical IR
text (`ember._C.segment_fingerprint`: values and symbols named by position, no fx names or
module paths, so node names, argument names and object ids never change it; it includes the
segment's input types, symbolic shapes and symbol ranges, i.e. the input specs), the SHA-256 of
each constant the segment reads (the weights), the build settings (back end, optimization_level,
truncate_double, channels_last), the GPU (name and compute capability, for CUDA), Ember's
version, the plan format version and this entry format's version. Partitioning settings
(min_block_size, torch_executed_ops, ...) are not in it: they change which segments exist,
which the segment text already says.

An entry is one blob: a header, the description JSON, the I/O metadata, the plan and a
SHA-256 over all of it. A blob that fails any check (truncated, corrupt, another version,
another description) is reported through the "ember.cache" logger and a warning, and the
plan is rebuilt, never a crash. Disk writes go to a temporary file in the cache folder and are
renamed into place (os.replace), so no reader ever sees half an entry and two processes
building the same key both succeed (the last rename wins; both entries are identical).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import warnings
from typing import Any, Callable, Protocol, runtime_checkable

from ember.logging import Counters, get_logger

__all__ = ["EngineCache", "DiskEngineCache", "build_segment", "cached_build", "engine_key",
           "key_description",
           "stats", "reset_stats", "default_cache_dir", "ENTRY_FORMAT_VERSION"]

log = get_logger("cache")

#: Version of the entry layout below; part of every key.
ENTRY_FORMAT_VERSION = 1
_MAGIC = b"EMBRCACHE\n"
_FILE_SUFFIX = ".ember-engine"

#: Settings that change a built plan (CompileSettings.to_compiler names).
BUILD_SETTINGS = ("backend", "optimization_level", "truncate_double", "channels_last")

_stats = Counters("builds", "hits", "misses", "stores", "rejected")


def stats() -> dict:
    """Counters for this process: ``builds`` (engines built by the builder, by any path),
    ``hits`` (plans loaded from a cache), ``misses``, ``stores`` and ``rejected`` (entries that
    failed to load and were rebuilt)."""
    return _stats.snapshot()


def reset_stats() -> None:
    """Sets every counter of `stats()` to zero."""
    _stats.reset()


def _count(name: str) -> None:
    _stats.count(name)


# ---------------------------------------------------------------------------------------------
# The interface and the default disk cache

@runtime_checkable
class EngineCache(Protocol):
    """What `custom_engine_cache=` takes: any object with these two methods.

    ``save(key, blob)`` stores `blob` (bytes) under `key` (a 64-character hex string) and may
    drop it (a size limit); ``load(key)`` returns the bytes saved under `key`, or None. Ember
    checks every blob it loads (checksum, description), so a cache may return stale or damaged
    data: Ember then rebuilds and saves again. Calls may come from several threads.
    """

    def save(self, key: str, blob: bytes) -> None: ...

    def load(self, key: str) -> bytes | None: ...


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/ember/engines`` (``~/.cache/ember/engines`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ember", "engines")


class DiskEngineCache:
    """Entries as files ``<key>.ember-engine`` in one folder, at most `max_bytes` in total.

    A load refreshes the entry's modification time; a save evicts the least recently used
    entries (oldest modification time) until the folder fits. Safe with several processes:
    writes are atomic renames, and an entry another process removes is simply a miss.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.directory = os.fspath(directory)
        self.max_bytes = int(max_bytes)
        check_writable(self.directory)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key + _FILE_SUFFIX)

    def load(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        try:
            os.utime(path)  # least recently *used*: a hit counts as a use
        except OSError:
            pass
        return blob

    def save(self, key: str, blob: bytes) -> None:
        if len(blob) > self.max_bytes:
            log.info("engine %s (%d bytes) is larger than engine_cache_size (%d bytes): not "
                     "stored", key[:16], len(blob), self.max_bytes)
            return
        # Make room first, so the new entry itself is never the one evicted.
        self._evict(self.max_bytes - len(blob), keep=key)
        _atomic_write(self.path(key), blob)

    def entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry, oldest first."""
        out = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(_FILE_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            out.append((st.st_mtime, st.st_size, path))
        out.sort()
        return out

    def _evict(self, budget: int, keep: str) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= budget:
                break
            if os.path.basename(path) == keep + _FILE_SUFFIX:
                continue
            try:
                os.unlink(path)
                log.info("evicted %s (%d bytes) to stay under engine_cache_size=%d",
                         os.path.basename(path), size, self.max_bytes)
            except FileNotFoundError:
                pass
            total -= size


def check_writable(directory: str) -> None:
    """Creates `directory` if needed; raises ValueError saying what to do when it cannot be
    written."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"ember: engine_cache_dir '{directory}' cannot be created ({e}); pass "
                         "another folder as engine_cache_dir=, or cache_built_engines=False "
                         "and reuse_cached_engines=False") from None
    if not os.path.isdir(directory):
        raise ValueError(f"ember: engine_cache_dir '{directory}' is not a folder")
    # os.access says yes to root for read-only folders: try a real file.
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".ember-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"ember: engine_cache_dir '{directory}' is not writable ({e}); pass "
                         "a writable folder as engine_cache_dir=, or cache_built_engines=False "
                         "and reuse_cached_engines=False") from None


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ember-engine-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_disk_caches: dict[tuple[str, int], DiskEngineCache] = {}


def cache_for(settings: Any) -> EngineCache | None:
    """The cache `settings` (a CompileSettings) asks for, or None when caching is off."""
    if not (settings.cache_built_engines or settings.reuse_cached_engines):
        return None
    if settings.custom_engine_cache is not None:
        return settings.custom_engine_cache
    directory = os.path.abspath(os.fspath(settings.engine_cache_dir or default_cache_dir()))
    key = (directory, int(settings.engine_cache_size))
    cache = _disk_caches.get(key)
    if cache is None:
        cache = _disk_caches[key] = DiskEngineCache(directory, settings.engine_cache_size)
    return cache


# ---------------------------------------------------------------------------------------------
# Keys

def _device_description(backend: str) -> dict:
    if backend != "cuda":
        return {"kind": backend}
    import torch
    if not torch.cuda.is_available():
        return {"kind": "cuda", "name": "unavailable"}
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"kind": "cuda", "name": torch.cuda.get_device_name(index),
            "capability": f"{major}.{minor}"}


def key_description(segment_text: str, constants: list, compiler_settings: dict) -> dict:
    """Everything an engine depends on (see the module docstring), as a JSON-able dict.

    segment_text and constants: what ``ember._C.segment_fingerprint(graph, partition, k)``
    returns; compiler_settings: ``CompileSettings.to_compiler()``.
    """
    from ember import _C
    weights = []
    for data in constants:
        h = hashlib.sha256()
        h.update(data)
        weights.append(h.hexdigest())
    backend = compiler_settings["backend"]
    return {
        "entry_format": ENTRY_FORMAT_VERSION,
        "ember": _C.__version__,
        "plan_format": int(_C.PLAN_FORMAT_VERSION),
        "backend": backend,
        "device": _device_description(backend),
        "settings": {k: compiler_settings[k] for k in BUILD_SETTINGS},
        "segment": segment_text,
        "weights": weights,
    }


def engine_key(description: dict) -> str:
    """The cache key of a description: SHA-256 hex of its canonical JSON."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Entries

def pack(description: dict, built: dict) -> bytes:
    """One entry: magic | u64 header length | header JSON | plan | SHA-256 of all before it."""
    header = json.dumps({
        "description": description,
        "inputs": [_io(io) for io in built["inputs"]],
        "outputs": [_io(io) for io in built["outputs"]],
        "build_log": list(built["build_log"]),
        "build_seconds": float(built["build_seconds"]),
    }, sort_keys=True).encode("utf-8")
    body = _MAGIC + struct.pack("<Q", len(header)) + header + bytes(built["plan"])
    return body + hashlib.sha256(body).digest()


def unpack(blob: bytes, description: dict) -> dict:
    """The built-segment dict of an entry; ValueError saying what is wrong otherwise."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"the cache returned a {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if len(blob) < len(_MAGIC) + 8 + 32 or not blob.startswith(_MAGIC):
        raise ValueError("not an Ember engine-cache entry (bad magic or truncated)")
    body, digest = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (corrupt or truncated entry)")
    (n,) = struct.unpack_from("<Q", body, len(_MAGIC))
    start = len(_MAGIC) + 8
    if start + n > len(body):
        raise ValueError("header length out of range")
    header = json.loads(body[start:start + n].decode("utf-8"))
    if header.get("description") != description:
        raise ValueError("the entry was built for something else (description differs: another "
                         "Ember or plan version, or a key collision)")
    return {"plan": body[start + n:], "inputs": header["inputs"], "outputs": header["outputs"],
            "build_log": header["build_log"], "build_seconds": header["build_seconds"]}


def _io(io: dict) -> dict:
    return {k: io[k] for k in ("name", "torch_dtype", "engine_dtype", "shape")}


# ---------------------------------------------------------------------------------------------
# The cache around one engine build: every path goes through `cached_build`

def cached_build(settings: Any, compiler_settings: dict, fingerprint: Callable[[], tuple],
                 build: Callable[[], dict], index: int,
                 check: Callable[[dict], None] | None = None) -> dict:
    """Builds one engine segment, or loads it from the engine cache that `settings` (a
    CompileSettings) selects. The frontend supplies the two steps that know its graph:

    - ``fingerprint()``: the segment's (canonical text, constants' data) from the C++
      ``compiler::segment_fingerprint`` (``ember._C.segment_fingerprint`` on the dynamo path,
      ``TSCompilation.fingerprint`` on the TorchScript path); constants are buffer-protocol
      objects (bytes, memoryview, numpy arrays);
    - ``build()``: builds the segment and returns plan (bytes), inputs, outputs (dicts with
      name, torch_dtype, engine_dtype, shape), build_log and build_seconds.

    `check(built)` (optional) is called on a loaded entry before it is used; an exception
    rejects the entry (warning, rebuild) like a corrupt one. Returns build()'s dict (or the
    entry's) plus ``cached`` and ``key`` (None when caching is off). Counts builds and hits in
    `stats()`. compiler_settings: the ember._C settings dict the segment was lowered and
    partitioned with (its back end and build settings enter the key).
    """
    cache = cache_for(settings)
    key = description = None
    if cache is not None:
        text, constants = fingerprint()
        description = key_description(text, constants, compiler_settings)
        key = engine_key(description)
        log.debug("segment %d key %s:\n%s", index, key, text)
    if cache is not None and settings.reuse_cached_engines:
        built = _load(cache, key, description, check)
        if built is not None:
            built["cached"], built["key"] = True, key
            return built
    _count("builds")
    built = dict(build())
    built["cached"], built["key"] = False, key
    if cache is not None and settings.cache_built_engines:
        try:
            cache.save(key, pack(description, built))
            _count("stores")
            log.info("stored engine %s (%d plan bytes)", key[:16], len(built["plan"]))
        except Exception as e:  # noqa: BLE001 - a full disk must not fail the compile
            log.warning("could not store engine %s: %s", key[:16], e)
            warnings.warn(f"ember: could not store engine {key[:16]} in the engine cache: {e}")
    return built


def build_segment(graph: Any, partition: Any, index: int, settings: Any,
                  timing_cache: Any = None, compiler_settings: dict | None = None) -> dict:
    """Builds engine segment `index` of `partition` (an ember._C.Partition of `graph`), or
    loads it from the engine cache that `settings` (a CompileSettings) selects.

    Returns what ``ember._C.build_segment`` returns (plan, inputs, outputs, build_log,
    build_seconds) plus ``cached`` (True when loaded) and ``key`` (None when caching is off).
    I/O entries carry this graph's value and fx names even on a hit. The dynamo path (and so
    ember.compile and torch.compile(backend="ember")) calls this; the TorchScript path calls
    `cached_build` with its own graph's steps, so every path shares the cache, the key and the
    build counter. compiler_settings: the ember._C settings dict the caller lowered and
    partitioned with (default: settings.to_compiler()).
    """
    from ember import _C
    csettings = compiler_settings if compiler_settings is not None else settings.to_compiler()
    seg = partition.segments()[index]

    def rename(built: dict) -> None:
        _rename(built["inputs"], seg["inputs"], "inputs", index)
        _rename(built["outputs"], seg["outputs"], "outputs", index)

    return cached_build(
        settings, csettings, lambda: _C.segment_fingerprint(graph, partition, index),
        lambda: _C.build_segment(graph, partition, index, csettings, timing_cache), index,
        check=rename)


def _load(cache: EngineCache, key: str, description: dict,
          check: Callable[[dict], None] | None = None) -> dict | None:
    start = time.perf_counter()
    try:
        blob = cache.load(key)
    except Exception as e:  # noqa: BLE001 - a broken custom cache means a rebuild
        blob, error = None, e
    else:
        error = None
    if blob is None:
        _count("misses")
        if error is not None:
            _reject(key, f"load raised {type(error).__name__}: {error}")
        else:
            log.info("engine cache miss %s", key[:16])
        return None
    try:
        built = unpack(blob, description)
    except (ValueError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _count("misses")
        _reject(key, str(e))
        return None
    if check is not None:
        try:
            check(built)
        except Exception as e:  # noqa: BLE001 - an entry that does not fit is rebuilt
            _count("misses")
            _reject(key, f"{type(e).__name__}: {str(e).strip()}")
            return None
    _count("hits")
    log.info("engine cache hit %s (%d plan bytes, loaded in %.3f s; building took %.2f s)",
             key[:16], len(built["plan"]), time.perf_counter() - start, built["build_seconds"])
    return built


def _reject(key: str, why: str) -> None:
    _count("rejected")
    msg = f"ember: engine cache entry {key[:16]} cannot be used ({why}); rebuilding it"
    log.warning(msg)
    warnings.warn(msg)


def _rename(ios: list, names: list, what: str, index: int) -> None:
    if len(ios) != len(names):
        raise RuntimeError(f"ember: engine cache entry for segment {index} has {len(ios)} "
                           f"{what} but the segment has {len(names)}")
    for io, (value, fx_name) in zip(ios, names):
        io["value"], io["fx_name"] = value, fx_name

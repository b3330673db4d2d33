"""Compile settings: one dataclass, documented field by field, validated by name."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Collection


@dataclasses.dataclass
class CompileSettings:
    """What `ember.compile` / `ember.dynamo.compile` accept as keyword arguments.

    Names and meanings follow Torch-TensorRT's dynamo settings where they exist.
    """

    #: Segments with fewer compute nodes (views and reshapes don't count) run in PyTorch.
    min_block_size: int = 5
    #: Ops forced to run in PyTorch: "aten::add" / "aten.add" (all overloads), "aten::add.Tensor",
    #: or the OpOverload / OpOverloadPacket itself (torch.ops.aten.add.Tensor).
    torch_executed_ops: Collection[Any] = ()
    #: Modules forced to run in PyTorch: an nn.Module class, its name ("Conv2d" or
    #: "torch.nn.modules.conv.Conv2d"), or a qualified submodule name ("layer1.0").
    torch_executed_modules: Collection[Any] = ()
    #: Raise instead of falling back; the error lists every unsupported node and why.
    require_full_compilation: bool = False
    #: Every torch.library custom op of the program that has no converter runs inside engines
    #: as a plugin calling its own kernel (ember.dynamo.plugin for each; docs/extending.md).
    custom_ops_as_plugins: bool = False
    #: Run f64 as f32 and i64 as i32 inside engines (values are cast at the boundary).
    truncate_double: bool = False
    #: Keep the model's dtypes (casts in the model are the precision plan). False is a
    #: deprecated spelling of enable_autocast=True (docs/precision.md).
    use_explicit_typing: bool = True
    #: Builder optimization level (docs/guide.md): 0 required passes only; 1 adds constant
    #: folding; 2 adds fusion (epilogues, attention); 3 adds layout (channels_last), everything.
    #: 4 and 5 (Torch-TensorRT's range) would build what 3 builds and are rejected.
    optimization_level: int = 3
    #: Torch-TensorRT's meaning: the scratch memory tactics may use (0: no limit). Accepted so
    #: Torch-TensorRT scripts run, but not applied: Ember's CUDA back end sizes each engine's
    #: scratch from the algorithms it picks. A nonzero value warns once; it never fails a build.
    workspace_size: int = 0
    #: "cpu", "cuda" or "cuda:<index>" (or a torch.device). None: the device the program's
    #: parameters and inputs are on (a CPU model builds CPU engines, a CUDA model CUDA engines).
    device: Any = None
    #: Convolutions in NHWC (the builder's channels_last pass): None lets the builder choose
    #: (today: f16/bf16 convolutions of CUDA engines, the layout of cuDNN's tensor-core
    #: kernels); True every 2-d float convolution on any device; False none.
    channels_last: bool | None = None
    #: Print the partition report and the engine build logs.
    debug: bool = False
    #: Print the partition report and stop: nothing is built, the input program is returned.
    dryrun: bool = False
    #: Raise when an engine fails to build instead of running its segment in PyTorch.
    pass_through_build_failures: bool = False
    #: Use the global partitioner (merges non-adjacent supported nodes); False: adjacency only.
    use_global_partitioner: bool = True
    #: CUDA engines replay a CUDA graph per input-shape signature (captured on the second call
    #: of a signature); False runs layer by layer on every call. Stored with the engine.
    cuda_graphs: bool = True
    #: A timing-cache file (str or os.PathLike): CUDA builds start from the tactic choices in
    #: it when it exists, and write it back (atomically) with every choice timed, so a second
    #: build of the same model on the same GPU times nothing. None: no file.
    timing_cache: str | os.PathLike | None = None
    #: Store every engine built in the engine cache (docs/guide.md, "Engine cache").
    cache_built_engines: bool = False
    #: Load engines from the engine cache instead of building them when the key matches.
    reuse_cached_engines: bool = False
    #: Folder of the disk engine cache; None: $XDG_CACHE_HOME/ember/engines (~/.cache/...).
    engine_cache_dir: str | os.PathLike | None = None
    #: Size limit of the disk engine cache in bytes; least recently used entries are evicted.
    engine_cache_size: int = 5 << 30
    #: An object with save(key, blob) and load(key) (ember.engine_cache.EngineCache) used
    #: instead of the disk cache.
    custom_engine_cache: Any = None

    # ---- Precision (docs/precision.md; validated and mapped in ember._precision).
    #: Run f32 nodes in autocast_low_precision_type except where the autocast rules keep f32.
    enable_autocast: bool = False
    #: torch.float16 (default) or torch.bfloat16.
    autocast_low_precision_type: Any = None
    #: Regular expressions searched in node names ("linear_3") and module paths ("head.fc"):
    #: matching nodes stay f32.
    autocast_excluded_nodes: Collection[str] = ()
    #: Ops that stay f32, spelled as for torch_executed_ops.
    autocast_excluded_ops: Collection[Any] = ()
    #: Nodes reading or writing a value whose max |x| on the calibration inputs exceeds this
    #: stay f32.
    autocast_max_output_threshold: float = 512.0
    #: Reductions (matmul/conv inner size, sums, softmax, norms) over more elements stay f32;
    #: None: no limit.
    autocast_max_depth_of_reduction: int | None = None
    #: Sample inputs (an iterable of input tuples, e.g. a DataLoader) measuring the magnitudes
    #: for autocast_max_output_threshold; None: the compile's example tensors.
    autocast_calibration_dataloader: Any = None
    #: Matmuls and convolutions accumulate in f32 (Ember's kernels always do).
    use_fp32_acc: bool = False
    #: Deprecated: {torch.half} means enable_autocast=True (f16), {torch.bfloat16} bf16.
    enabled_precisions: Collection[Any] = ()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CompileSettings":
        names = [f.name for f in dataclasses.fields(cls)]
        aliases = {"truncate_long_and_double": "truncate_double"}
        clean = {}
        for key, value in kwargs.items():
            key = aliases.get(key, key)
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise TypeError(f"ember: unknown setting '{key}'{hint} "
                                f"(valid settings: {', '.join(names)})")
            clean[key] = value
        settings = cls(**clean)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Checks every field's type and range; raises TypeError / ValueError naming the field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _BOOL_FIELDS and not isinstance(value, bool):
                raise TypeError(f"ember: {f.name} must be True or False, got "
                                f"{type(value).__name__} {value!r}")
        for name in ("min_block_size", "optimization_level", "workspace_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ember: {name} must be an int, got "
                                f"{type(value).__name__} {value!r}")
        if self.min_block_size < 1:
            raise ValueError("ember: min_block_size must be an int >= 1, got "
                             f"{self.min_block_size!r}")
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            extra = (" (levels 4 and 5 would build exactly what 3 builds: use 3, which runs every "
                     "optimization)" if self.optimization_level in (4, 5) else "")
            raise ValueError(f"ember: optimization_level must be one of "
                             f"{sorted(OPTIMIZATION_LEVELS)}, got {self.optimization_level}{extra}")
        if self.workspace_size < 0:
            raise ValueError(f"ember: workspace_size must be >= 0 bytes (0: no limit), "
                             f"got {self.workspace_size}")
        for name in ("torch_executed_ops", "torch_executed_modules"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
                raise TypeError(f"ember: {name} must be a list (or set/tuple) of names, got "
                                f"{type(value).__name__} {value!r}; write {name}=[{value!r}]")
        for op in self.torch_executed_ops:
            _op_name(op)  # raises for an unknown op or a wrong type
        for m in self.torch_executed_modules:
            if not isinstance(m, (str, type)):
                raise TypeError("ember: torch_executed_modules entries are module classes or "
                                f"names (str), got {type(m).__name__} {m!r}")
        self.device_type()  # parses the device
        if self.timing_cache is not None and not isinstance(self.timing_cache, (str, os.PathLike)):
            raise TypeError("ember: timing_cache must be a file path (str or os.PathLike) or None, "
                            f"got {type(self.timing_cache).__name__}")
        if self.channels_last not in (None, True, False) or isinstance(self.channels_last, int) \
                and not isinstance(self.channels_last, bool):
            raise ValueError("ember: channels_last must be None, True or False, "
                             f"got {self.channels_last!r}")
        from ember import _precision
        _precision.resolve(self)
        _validate_engine_cache(self)

    def device_type(self) -> str | None:
        """"cpu" or "cuda" for an explicit device, None when the program decides."""
        parsed = _parse_device(self.device)
        return None if parsed is None else parsed[0]

    def resolve_device(self, program_device: Any = None) -> tuple[str, int | None]:
        """The back end and CUDA device index engines are built for: the explicit `device`, else
        `program_device` (where the program's parameters and inputs are). CUDA: checks that
        torch has that device (the error names it) and that Ember was built with CUDA."""
        parsed = _parse_device(self.device)
        if parsed is None:
            parsed = _parse_device(program_device) or ("cpu", None)
        backend, index = parsed
        if backend != "cuda":
            return "cpu", None
        import torch
        from ember import _C
        where = f"'{self.device}'" if self.device is not None else \
            f"{program_device} (where the program's parameters and inputs are)"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index is not None and index >= count:
            seen = f"cuda:0..cuda:{count - 1}" if count else "no GPU"
            raise ValueError(f"ember: device {where} does not exist: torch sees {count} CUDA "
                             f"device(s) ({seen}); pick one of them or device='cpu'")
        if "cuda" not in _C.available_backends():
            raise RuntimeError(f"ember: device {where} needs the CUDA back end, but this Ember "
                               "build has none (build with CUDA, or compile a CPU model with "
                               "device='cpu')")
        if index is None:
            # Plain "cuda" is the current device, as in PyTorch; without a GPU (a build-only
            # machine) device 0, which the plan does not depend on.
            index = torch.cuda.current_device() if count else 0
        return "cuda", index

    def backend(self, program_device: Any = None) -> str:
        """"cpu" or "cuda": see resolve_device."""
        return self.resolve_device(program_device)[0]

    def to_compiler(self, backend: str | None = None) -> dict:
        """The subset the C++ compiler reads (ember._C settings dict); `backend` as resolved by
        resolve_device (default: resolve_device() without a program device)."""
        return {
            "min_block_size": int(self.min_block_size),
            "torch_executed_ops": [_op_name(o) for o in self.torch_executed_ops],
            "torch_executed_modules": [_module_name(m) for m in self.torch_executed_modules],
            "require_full_compilation": bool(self.require_full_compilation),
            "truncate_double": bool(self.truncate_double),
            "optimization_level": int(self.optimization_level),
            "backend": backend or self.backend(),
            "channels_last": {None: "auto", True: "on", False: "off"}[self.channels_last],
            "debug": bool(self.debug),
            **_precision_settings(self),
        }


def _precision_settings(settings: "CompileSettings") -> dict:
    from ember import _precision
    return _precision.compiler_settings(settings)


_BOOL_FIELDS = frozenset({
    "require_full_compilation", "truncate_double", "use_explicit_typing", "debug", "dryrun",
    "pass_through_build_failures", "use_global_partitioner", "cuda_graphs",
    "custom_ops_as_plugins",
})

#: Levels that each build something different (see the optimization_level field).
OPTIMIZATION_LEVELS = frozenset({0, 1, 2, 3})


def _parse_device(device: Any) -> tuple[str, int | None] | None:
    """("cpu", None), ("cuda", index or None), or None for None. Raises ValueError otherwise."""
    if device is None:
        return None
    import torch
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip()
    else:
        raise TypeError(f"ember: device must be 'cpu', 'cuda', 'cuda:<index>' or a torch.device, "
                        f"got {type(device).__name__} {device!r}")
    if text == "cpu":
        return "cpu", None
    if text == "cuda":
        return "cuda", None
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"ember: device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def _op_name(op: Any) -> str:
    """aten::add.Tensor style key for an op given as a string or a torch op object. Raises
    TypeError for another type and ValueError for a name torch has no op for."""
    import torch
    if isinstance(op, torch._ops.OpOverload):
        return op_key(op)
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op._qualified_op_name
    if not isinstance(op, str):
        raise TypeError("ember: torch_executed_ops entries are op names ('aten::add', "
                        "'aten::add.Tensor') or torch ops (torch.ops.aten.add.Tensor), got "
                        f"{type(op).__name__} {op!r}")
    text = _op_text(op)
    _check_op_exists(text, op)
    return text


def _check_op_exists(text: str, given: str) -> None:
    import torch
    ns, _, rest = text.partition("::")
    name, _, overload = rest.partition(".")
    packet = getattr(getattr(torch.ops, ns, None), name, None) if ns and name else None
    try:
        ok = packet is not None and (not overload or overload in packet.overloads())
    except Exception:  # noqa: BLE001 - a namespace object without overloads()
        ok = False
    if not ok:
        raise ValueError(f"ember: torch_executed_ops entry {given!r} names no PyTorch op "
                         f"({text}); write 'aten::<op>' or 'aten::<op>.<overload>', e.g. "
                         "'aten::add' or 'aten::add.Tensor'")


def _op_text(op: str) -> str:
    text = str(op)
    if text.startswith("torch.ops."):
        text = text[len("torch.ops."):]
    if "::" not in text and "." in text:
        ns, rest = text.split(".", 1)
        text = f"{ns}::{rest}"
    if text.endswith(".default"):
        text = text[: -len(".default")]
    return text


def _module_name(m: Any) -> str:
    if isinstance(m, type):
        return f"{m.__module__}.{m.__qualname__}"
    return str(m)


def op_key(op) -> str:
    """The IR key of an OpOverload: "aten::add.Tensor", or "aten::relu" for the default."""
    name = op._schema.name
    overload = op._overloadname
    return name if overload == "default" else f"{name}.{overload}"


def _validate_engine_cache(s: CompileSettings) -> None:
    """The engine-cache settings (see ember.engine_cache)."""
    for name in ("cache_built_engines", "reuse_cached_engines"):
        if not isinstance(getattr(s, name), bool):
            raise TypeError(f"ember: {name} must be True or False, got {getattr(s, name)!r}")
    if s.engine_cache_dir is not None and not isinstance(s.engine_cache_dir, (str, os.PathLike)):
        raise TypeError("ember: engine_cache_dir must be a folder path (str or os.PathLike) or "
                        f"None, got {type(s.engine_cache_dir).__name__}")
    if (not isinstance(s.engine_cache_size, int) or isinstance(s.engine_cache_size, bool)
            or s.engine_cache_size < 0):
        raise ValueError("ember: engine_cache_size must be a size in bytes (an int >= 0), got "
                         f"{s.engine_cache_size!r}")
    cache = s.custom_engine_cache
    if cache is not None and not (callable(getattr(cache, "save", None))
                                  and callable(getattr(cache, "load", None))):
        raise TypeError("ember: custom_engine_cache must have save(key, blob) and load(key) "
                        f"methods (see ember.engine_cache.EngineCache); got {type(cache).__name__}")
    if s.cache_built_engines or s.reuse_cached_engines:
        if cache is None:
            from ember import engine_cache
            engine_cache.check_writable(os.path.abspath(os.fspath(
                s.engine_cache_dir or engine_cache.default_cache_dir())))

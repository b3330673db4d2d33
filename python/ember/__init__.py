"""Ember: an ahead-of-time compiler and inference engine for PyTorch models.

    import torch, ember
    exp_program = torch.export.export(model, tuple(inputs))
    compiled = ember.dynamo.compile(exp_program, inputs)   # a torch.fx.GraphModule
    compiled(*inputs)

or in one call: ``ember.compile(model, ir="dynamo", inputs=inputs, **settings)``; the JIT path
is ``torch.compile(model, backend="ember", options={...})`` (docs/torch_compile.md). Settings are the
fields of `ember.CompileSettings`. `ember.engine` loads and runs plans without PyTorch.
"""

from ember import _C
from ember.engine import Engine, EngineError, available_backends

__version__ = _C.__version__

try:  # the compiler needs PyTorch; the engine runtime above does not
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass
else:
    from ember import debug, dynamo, engine_cache, logging, ts
    from ember._api import compile, load, save
    from ember._backend import register as _register_backend
    from ember._converters import load_converters
    from ember.plugins import load_plugins
    from ember._input import Input
    from ember._settings import CompileSettings
    from ember.quantization import quantize

    # Register torch.classes.ember.Engine and ember::execute_engine now, so a compiled program
    # saved with torch.jit.save loads with a plain torch.jit.load after `import ember`. Without
    # the native library (a source tree without a build) the compiler entry points raise later.
    from ember import _runtime as _rt
    try:
        _rt.load_library()
    except RuntimeError:
        pass

    _register_backend()  # torch.compile(model, backend="ember")

__all__ = ["Engine", "EngineError", "available_backends", "__version__", "debug", "dynamo", "ts",
           "compile", "save", "load", "Input", "CompileSettings", "load_converters", "load_plugins",
           "engine_cache", "logging", "quantize"]

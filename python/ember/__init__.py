"""Ember: an ahead-of-time compiler and inference engine for PyTorch models.

This release exposes the engine runtime (`ember.engine`); the compiler and the PyTorch
integration (`ember.compile`, `ember.dynamo`) come with the next releases.
"""

from ember import _C
from ember.engine import Engine, available_backends

__version__ = _C.__version__
__all__ = ["Engine", "available_backends", "__version__"]

"""Session-wide pytest hooks for the Python tests."""

import importlib.util
import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ember_location() -> tuple[str, bool]:
    """Where `ember` is imported from, and whether that is this checkout.

    A scikit-build editable install (`pip install -e .`, as tools/run_example.sh does) puts an
    import hook into the environment that outranks PYTHONPATH: when the shared virtual
    environment's install belongs to another checkout, the tests silently run that checkout's
    build (seen 2026-12-06, after a `.ci/run` in a second clone)."""
    # find_spec locates the package through the same finders without importing it (importing
    # here would import torch and read EMBER_* settings before the test modules set them).
    spec = importlib.util.find_spec("ember")
    if spec is None or spec.origin is None:
        return "not found", True  # the tests then fail loudly on their own
    where = os.path.dirname(os.path.abspath(spec.origin))
    ours = os.path.join(_REPO, "python")
    return where, os.path.commonpath([where, ours]) == ours


def pytest_report_header(config):
    where, ours = _ember_location()
    return f"ember: {where}" + ("" if ours else f" -- NOT this checkout ({_REPO}/python)")


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # pytest-xdist workers: the controller warns once
        return
    where, ours = _ember_location()
    if not ours:
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"the tests import ember from {where}, not from this checkout ({_REPO}/python): "
            "an editable install of another checkout shadows PYTHONPATH, so they test that build "
            "(pip uninstall ember, or run tools/run_example.sh in this checkout)"), stacklevel=2)

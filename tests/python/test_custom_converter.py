"""Converters from a user's shared library (examples/custom_converter/, built as
libember_custom_converter_example.so): a custom op defined with TORCH_LIBRARY runs inside an
engine through the library's converter, and a priority converter overrides a built-in one for
the nodes its validator accepts."""

import json
import os
import sys

import pytest
import torch

import ember

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters"))
from harness import assert_close  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("EMBER_CUSTOM_CONVERTER_LIB", os.path.join(
    ROOT, "build", "dev", "examples", "custom_converter", "libember_custom_converter_example.so"))

if not os.path.isfile(LIB):
    if os.environ.get("EMBER_REQUIRE_DEPLOY"):
        raise RuntimeError(f"custom converter example not built at {LIB} (tools/test.sh builds it)")
    pytest.skip(f"custom converter example not built ({LIB})", allow_module_level=True)


@pytest.fixture(scope="module")
def loaded():
    added = ember.load_converters(LIB)
    return added


class UsesCustomOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.ops.my_ops.scaled_tanh(self.fc(x), 0.5)
        return torch.nn.functional.hardtanh(y * 3.0, -2.5, 2.5) + torch.nn.functional.hardtanh(y)


def test_load_converters_reports_keys(loaded):
    assert "my_ops::scaled_tanh" in loaded or "my_ops::scaled_tanh" in torch.ops.ember.converter_ops()
    with pytest.raises(FileNotFoundError):
        ember.load_converters("/nonexistent/libnothing.so")


def test_custom_op_runs_inside_an_engine(loaded):
    torch.manual_seed(0)
    m = UsesCustomOp().eval()
    x = torch.randn(4, 8)
    compiled = ember.ts.compile(torch.jit.script(m), inputs=[
        ember.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(16, 8))], min_block_size=1)
    kinds = [n.kind() for n in compiled.graph.nodes()]
    assert "my_ops::scaled_tanh" not in kinds, compiled.graph
    assert kinds.count("ember::execute_engine") == 1 and compiled.ember_report.fallback == []
    names = [layer["name"] for layer in json.loads(compiled._ember_engine_0.inspect())["layers"]]
    # The library's layers are in the engine (the builder may fuse them into a neighbour and
    # join the names with '+').
    assert any("my_tanh" in n for n in names) and any("my_scale" in n for n in names), names
    # The priority converter took hardtanh(-2.5, 2.5); the built-in one took hardtanh(-1, 1).
    assert sum("my_ops_clip" in n for n in names) == 1, names
    for b in (1, 4, 16):
        x = torch.randn(b, 8)
        with torch.no_grad():
            assert_close(compiled(x), m(x))


def _register_scaled_tanh_fake():
    # The library defines a CPU kernel only; torch.export traces with a fake implementation.
    from torch._library import simple_registry
    if simple_registry.singleton.find("my_ops::scaled_tanh").fake_impl.kernel is None:
        torch.library.register_fake("my_ops::scaled_tanh")(lambda x, alpha: torch.empty_like(x))


def test_loaded_converter_is_used_by_the_dynamo_path(loaded):
    """libember.so holds the one converter registry of the process: a converter that
    ember.load_converters loaded reaches ember._C's compiler (the dynamo path), not only the
    TorchScript path inside libember_torch.so."""
    from harness import compile_cpu
    _register_scaled_tanh_fake()
    torch.manual_seed(0)
    m = UsesCustomOp().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(m, [x], min_block_size=1)
    assert report.fallback == [], report.fallback
    assert len(report.engines) == 1, report.engines
    assert any(op.startswith("my_ops::scaled_tanh") for op in report.engines[0]["ops"]), report.engines
    with torch.no_grad():
        assert_close(gm(x), m(x))
    # ember.compile's default ir is the same path.
    compiled = ember.compile(m, inputs=[x], min_block_size=1, device="cpu")
    with torch.no_grad():
        assert_close(compiled(x), m(x))

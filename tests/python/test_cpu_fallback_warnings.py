"""The CPU back end's oneDNN fallbacks are said, not silent: a layer oneDNN refuses runs on the
reference kernel (same result, slower) and is reported once per engine, with the layer and
oneDNN's reason, as a warning on the "ember" logger, from compiled modules (the torch bridge)
and from ember.Engine.run. oneDNN refusing is forced with the test hook
ember._C._dnnl_refuse_for_testing."""

import logging
import os
import sys

import numpy as np
import pytest
import torch

import ember
from ember import _C

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters"))
from harness import TOLERANCES  # noqa: E402

REASON = "oneDNN matmul refused it at creation (refused by dnnl_refuse_for_testing, status unimplemented)"


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture
def refuse():
    _C._dnnl_refuse_for_testing(True)
    yield
    _C._dnnl_refuse_for_testing(False)


def needs_dnnl(before):
    if _C._dnnl_fallback_count() == before:
        pytest.skip("this build has no oneDNN (or EMBER_CPU_DNNL=0): nothing falls back")


def ember_warnings(caplog):
    return [r for r in caplog.records if r.name == "ember" and "reference kernel" in r.getMessage()]


def test_compiled_module_warns_once_per_layer(refuse, caplog):
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(4, 16)
    gm = ember.compile(model, inputs=[x], device="cpu", require_full_compilation=True)
    before = _C._dnnl_fallback_count()
    with caplog.at_level(logging.WARNING, logger="ember"):
        for _ in range(3):
            with torch.no_grad():
                torch.testing.assert_close(gm(x), model(x), rtol=TOLERANCES[torch.float32][0],
                                           atol=TOLERANCES[torch.float32][1])
    needs_dnnl(before)
    assert _C._dnnl_fallback_count() >= before + 3  # counted on every call
    said = ember_warnings(caplog)
    assert len(said) == 1, [r.getMessage() for r in said]  # once per engine, not per call
    assert said[0].levelno == logging.WARNING
    assert said[0].getMessage().startswith("the CPU back end runs MatrixMultiply '"), said[0].getMessage()
    assert REASON in said[0].getMessage()


def test_compiled_module_is_silent_when_onednn_runs_everything(caplog):
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(4, 16)
    gm = ember.compile(model, inputs=[x], device="cpu", require_full_compilation=True)
    before = _C._dnnl_fallback_count()
    with caplog.at_level(logging.WARNING, logger="ember"):
        for _ in range(2):
            with torch.no_grad():
                gm(x)
    assert _C._dnnl_fallback_count() == before
    assert not ember_warnings(caplog)


def test_engine_run_logs_on_the_ember_logger(refuse, caplog):
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(4, 16)
    _C._dnnl_refuse_for_testing(False)  # the build's constant folding is not what is tested
    plan = ember.ts.convert_method_to_engine(torch.jit.script(model), "forward", inputs=[x])
    _C._dnnl_refuse_for_testing(True)
    engine = ember.Engine(plan)
    name = next(t["name"] for t in engine.io_tensors() if t["is_input"])
    out = next(t["name"] for t in engine.io_tensors() if not t["is_input"])
    before = _C._dnnl_fallback_count()
    with caplog.at_level(logging.WARNING, logger="ember"):
        for _ in range(2):
            y = engine.run({name: x.numpy()})[out]
            np.testing.assert_allclose(y, model(x).detach().numpy(),
                                       rtol=TOLERANCES[torch.float32][0],
                                       atol=TOLERANCES[torch.float32][1])
    needs_dnnl(before)
    said = ember_warnings(caplog)
    assert len(said) == 1, [r.getMessage() for r in said]  # once per engine
    assert said[0].levelno == logging.WARNING
    assert REASON in said[0].getMessage()

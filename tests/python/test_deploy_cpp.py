"""The C++ deployment example (examples/cpp/deploy.cpp, built as ember_deploy): a program
compiled in Python and saved with torch.jit.save runs from C++ with libtorch + libember_torch.so
only, and its output matches eager PyTorch."""

import os
import subprocess

import numpy as np
import pytest
import torch

import ember
from test_torchscript import DataDependent, LeNet, ROOT  # noqa: F401 - same models
from harness import TOLERANCES  # noqa: E402 (test_torchscript put it on sys.path)

BIN = os.environ.get("EMBER_DEPLOY_BIN",
                     os.path.join(ROOT, "build", "dev", "examples", "cpp", "ember_deploy"))

if not os.path.isfile(BIN):
    if os.environ.get("EMBER_REQUIRE_DEPLOY"):
        raise RuntimeError(f"ember_deploy not built at {BIN} (tools/test.sh builds it)")
    pytest.skip(f"ember_deploy not built ({BIN}); build target ember_deploy", allow_module_level=True)


def deploy_input(shape):
    """The input deploy.cpp makes: linspace(-1, 1) over the elements."""
    n = int(np.prod(shape))
    return torch.linspace(-1.0, 1.0, n).reshape(shape)


def run_cpp(path, shape, out):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # nothing of Python is needed
    result = subprocess.run([BIN, path, ",".join(map(str, shape)), "--iters", "3", "--out", out],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "median" in result.stdout
    # No layer fell back from oneDNN to a reference kernel (the bridge warns on stderr): with
    # libtorch_cpu loaded before libdnnl, every oneDNN matmul did (docs/deployment.md).
    assert "reference kernel" not in result.stderr, result.stderr
    return torch.from_numpy(np.fromfile(out, dtype=np.float32))


@pytest.mark.parametrize("make, shape", [(LeNet, (2, 1, 32, 32)), (DataDependent, (1, 3, 8, 8))])
def test_cpp_program_matches_eager(make, shape, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    spec = ember.Input(min_shape=(1,) + shape[1:], opt_shape=shape, max_shape=(4,) + shape[1:])
    compiled = ember.ts.compile(torch.jit.script(model), inputs=[spec], min_block_size=1)
    path = str(tmp_path / "model_ember.ts")
    torch.jit.save(compiled, path)
    for batch in (shape[0], 3):
        s = (batch,) + shape[1:]
        got = run_cpp(path, s, str(tmp_path / "out.bin"))
        with torch.no_grad():
            expected = model(deploy_input(s)).reshape(-1)
        atol, rtol = TOLERANCES[torch.float32]
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def test_cpp_program_reports_bad_file(tmp_path):
    bad = tmp_path / "not_a_model.ts"
    bad.write_text("hello")
    result = subprocess.run([BIN, str(bad), "1,2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot load" in result.stderr

"""The Python runtime binding, on the plan the LeNet example writes (tools/test.sh builds it)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ember

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENET = os.path.join(ROOT, "build", "dev", "examples", "lenet")


@pytest.fixture(scope="module")
def lenet_plan(tmp_path_factory):
    if not os.path.exists(LENET):
        pytest.skip("build/dev/examples/lenet is not built (run tools/test.sh)")
    path = str(tmp_path_factory.mktemp("plans") / "lenet.plan")
    out = subprocess.run([LENET, "--plan", path, "--iters", "1"], check=True,
                         capture_output=True, text=True).stdout
    # The example prints sample 0's logits for its own input; keep them to compare.
    line = next(l for l in out.splitlines() if "sample 0 logits" in l)
    return path, [float(v) for v in line.split(":")[1].split()]


def test_backends():
    assert "cpu" in ember.available_backends()


def test_iostreams_work_inside_libember_after_torch():
    """libember.so's iostreams format numbers in a process that loaded torch first. Where the
    compiler links libstdc++ statically, the copy inside Ember's libraries must keep its symbols
    local (ember_private_runtime in CMakeLists.txt): exported, they were half-bound to the
    system's libstdc++ that torch loads, and a number written to a stream came out empty (or
    crashed cuDNN's frontend on the GPU machine)."""
    code = "import torch\nfrom ember import _C\nprint(_C._iostreams_probe())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "eng420.5"


def test_libember_exports_no_libstdcxx_internals():
    """The link-level half of the check above: libember.so defines no libstdc++ internals in its
    dynamic symbol table (codecvt members are never header instances, so one there means a
    static libstdc++ copy is exported). Passes trivially where libstdc++ is a shared library;
    on a toolchain that links it statically (the GPU machine) it tests the link option."""
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    lib = os.path.join(os.path.dirname(ember.__file__), "libember.so")
    symbols = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                             check=True).stdout
    exported = [line.split()[-1] for line in symbols.splitlines() if "codecvt" in line]
    assert not exported, f"{lib} exports {len(exported)} codecvt symbols, e.g. {exported[:3]}"


def test_lenet_plan_runs_and_matches_cpp(lenet_plan):
    path, _ = lenet_plan
    engine = ember.Engine.from_file(path)
    assert engine.backend == "cpu"
    io = engine.io_tensors()
    assert [t["name"] for t in io] == ["input", "logits"]
    assert io[0]["shape"] == "[batch, 1, 32, 32]"
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32), dtype=np.float32)
    y = engine.run({"input": x})["logits"]
    assert y.shape == (3, 10)
    # Each sample is independent of the others in the batch.
    y1 = engine.run({"input": x[1:2].copy()})["logits"]
    np.testing.assert_allclose(y1[0], y[1], rtol=1e-5, atol=1e-5)
    layers = engine.inspect()["layers"]
    assert any(l["type"] == "Convolution" for l in layers)


def test_errors_are_clear(lenet_plan):
    path, _ = lenet_plan
    data = open(path, "rb").read()
    with pytest.raises(ember.engine.EngineError, match="plan"):
        ember.Engine(data[: len(data) // 2])
    engine = ember.Engine(data)
    with pytest.raises(ember.engine.EngineError, match=r"dim 0.*outside the optimization profile"):
        engine.run({"input": np.zeros((65, 1, 32, 32), np.float32)})
    with pytest.raises(ember.engine.EngineError, match="must be f32"):
        engine.run({"input": np.zeros((1, 1, 32, 32), np.float64)})


def test_timing_cache_bytes(lenet_plan):
    path, _ = lenet_plan
    data = ember.Engine.from_file(path).timing_cache()
    assert data.startswith(b"EMBRTCAC")
    # A cpu plan carries no tactic choices.
    assert len(ember._C.TimingCache.from_bytes(data)) == 0


def test_run_refuses_plans_for_the_device():
    """Engine.run hands numpy (host) buffers to the plan: a cuda plan gets a clear error, not
    host pointers used as device addresses."""
    import base64

    import torch

    if "cuda" not in ember.available_backends():
        pytest.skip("this build has no CUDA back end")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    # A cuda plan builds without a GPU (tactic timing is left to the first call).
    gm = ember.dynamo.compile(torch.export.export(model, (x,)), [x], device="cuda",
                              min_block_size=1)
    engine_obj = next(getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_"))
    plan = base64.b64decode(engine_obj.state()[1])
    engine = ember.Engine(plan)
    assert engine.backend == "cuda"
    with pytest.raises(ember.EngineError, match=r"runs 'cpu' plans on numpy arrays; this plan is "
                                                 r"for the 'cuda' back end"):
        engine.run({engine.io_tensors()[0]["name"]: x.numpy()})

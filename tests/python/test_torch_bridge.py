"""The torch bridge: torch.classes.ember.Engine and torch.ops.ember.execute_engine.

Plans come from ember_torch_make_plan (src/torch/tools/make_plan.cpp, built with
EMBER_BUILD_TORCH=ON), so these tests need no compiler. The library and the tool are looked up
in the installed package, then $EMBER_NATIVE_DIR, then build/{dev,h4}/src/torch.
"""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIRS = [os.path.join(ROOT, "build", b, "src", "torch") for b in ("dev", "h4")]
RUNTIME_PY = os.path.join(ROOT, "python", "ember", "_runtime.py")


def _import_runtime():
    """ember._runtime from the installed package, else straight from the source tree (it only
    needs torch, so it works before ember._C is built)."""
    try:
        from ember import _runtime

        return _runtime
    except ImportError:
        spec = importlib.util.spec_from_file_location("ember_runtime_src", RUNTIME_PY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


rt = _import_runtime()
if rt.library_path() is None and "EMBER_NATIVE_DIR" not in os.environ:
    for d in BUILD_DIRS:
        if os.path.isfile(os.path.join(d, "libember_torch.so")):
            os.environ["EMBER_NATIVE_DIR"] = d
            break
if rt.library_path() is None:
    pytest.skip(
        "libember_torch.so not found (configure with -DEMBER_BUILD_TORCH=ON, build ember_torch, "
        "and set EMBER_NATIVE_DIR=<build>/src/torch)",
        allow_module_level=True,
    )
LIB = rt.load_library()

F32 = {"torch_dtype": "f32", "engine_dtype": "f32"}


def _io(name, shape, torch_dtype="f32", engine_dtype="f32"):
    return {"name": name, "torch_dtype": torch_dtype, "engine_dtype": engine_dtype, "shape": shape}


AFFINE_META = {
    "backend": "cpu",
    "inputs": [_io("input_0", "[s0, 4]")],
    "outputs": [_io("output_0", "[s0, 4]")],
}
TWO_IO_META = {
    "backend": "cpu",
    "inputs": [_io("input_0", "[s0, 3]"), _io("input_1", "[s0, 3]", "i64", "i32")],
    "outputs": [_io("output_0", "[s0*3]"), _io("output_1", "[s0, 3]", "i64", "i32")],
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    candidates = [os.path.join(os.path.dirname(LIB), "ember_torch_make_plan")]
    candidates += [os.path.join(d, "ember_torch_make_plan") for d in BUILD_DIRS]
    tool = next((c for c in candidates if os.path.isfile(c)), None)
    if tool is None:
        pytest.skip("ember_torch_make_plan is not built (build target ember_torch_make_plan)")
    out = tmp_path_factory.mktemp("plans")
    subprocess.run([tool, str(out)], check=True, capture_output=True)
    return {name: (out / f"{name}.plan").read_bytes() for name in ("affine_relu", "two_io")}


@pytest.fixture
def affine(plans):
    return rt.make_engine(plans["affine_relu"], AFFINE_META)


@pytest.fixture
def two_io(plans):
    return rt.make_engine(plans["two_io"], TWO_IO_META)


def run(engine, *inputs):
    return torch.ops.ember.execute_engine(list(inputs), engine)


# ---------------------------------------------------------------- execution


def test_results_match_torch_for_every_batch_in_profile(affine):
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 4, 8, 2):  # one engine, no rebuild, any order
        x = torch.randn(batch, 4, generator=gen)
        (y,) = run(affine, x)
        assert y.shape == (batch, 4) and y.dtype == torch.float32
        torch.testing.assert_close(y, torch.relu(x * 2 + 1), rtol=1.3e-6, atol=1e-5)
    assert affine.num_runs() == 5


def test_torch_function_lookups_on_engines_keep_their_meaning(affine):
    # load_library answers the per-call `__torch_function__` lookup on ScriptObjects from
    # Python (PyTorch's own __getattr__ throws a C++ exception for it): the answer must be
    # what it was, and every other attribute must still reach PyTorch.
    with pytest.raises(AttributeError):
        affine.__torch_function__
    assert not hasattr(affine, "__torch_function__")
    assert not torch.overrides.is_tensor_like(affine)
    assert affine.num_runs() >= 0  # a TorchBind method, through PyTorch's __getattr__
    with pytest.raises(AttributeError, match="no_such_attribute"):
        affine.no_such_attribute
    x = torch.randn(2, 4)
    torch.testing.assert_close(run(affine, x)[0], torch.relu(x * 2 + 1))

    # A TorchFunctionMode still sees the op (modes do not depend on the argument lookup).
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        run(affine, x)
    assert torch.ops.ember.execute_engine.default in seen or \
        torch.ops.ember.execute_engine in seen, seen


def test_outputs_do_not_require_grad(affine):
    x = torch.randn(2, 4, requires_grad=True)
    (y,) = run(affine, x)
    assert not y.requires_grad  # inference-only: no autograd graph through an engine
    torch.testing.assert_close(y, torch.relu(x.detach() * 2 + 1))


def test_non_contiguous_input_is_made_contiguous(affine):
    x = torch.randn(4, 6)[:, 1:5]  # strided view
    assert not x.is_contiguous()
    torch.testing.assert_close(run(affine, x)[0], torch.relu(x * 2 + 1))


def test_two_inputs_two_outputs_with_int64_boundary(two_io):
    a = torch.randn(5, 3)
    b = torch.randint(-100, 100, (5, 3), dtype=torch.int64)
    flat, sq = run(two_io, a, b)
    assert flat.shape == (15,) and flat.dtype == torch.float32
    assert sq.shape == (5, 3) and sq.dtype == torch.int64
    torch.testing.assert_close(flat, (a + b.float()).reshape(-1))
    assert torch.equal(sq, b * b)


def test_int64_input_truncates_to_engine_int32(two_io):
    # The compiler chose i32 inside the engine: values outside int32 wrap (documented).
    b = torch.tensor([[2**32 + 3, -(2**32) - 2, 7]], dtype=torch.int64)
    _, sq = run(two_io, torch.zeros(1, 3), b)
    assert sq.tolist() == [[9, 4, 49]]


def test_float64_boundary_casts_to_engine_float32_and_back(plans):
    meta = {
        "backend": "cpu",
        "inputs": [_io("input_0", "[s0, 4]", "f64", "f32")],
        "outputs": [_io("output_0", "[s0, 4]", "f64", "f32")],
    }
    engine = rt.make_engine(plans["affine_relu"], meta)
    x = torch.randn(2, 4, dtype=torch.float64)
    (y,) = run(engine, x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torch.relu(x.float() * 2 + 1).double())


def test_concurrent_calls_share_one_engine(affine):
    xs = [torch.randn(b % 8 + 1, 4) for b in range(16)]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = run(affine, xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, results):
        torch.testing.assert_close(y, torch.relu(x * 2 + 1))
    assert affine.num_runs() == 80


def test_metadata_methods(two_io):
    assert two_io.backend() == "cpu"
    assert two_io.input_names() == ["input_0", "input_1"]
    assert two_io.output_names() == ["output_0", "output_1"]
    assert two_io.input_shapes() == ["[s0, 3]", "[s0, 3]"]
    assert two_io.output_shapes() == ["[s0*3]", "[s0, 3]"]
    assert two_io.input_dtypes() == ["f32", "i64"]
    assert two_io.output_dtypes() == ["f32", "i64"]
    info = json.loads(two_io.inspect())
    assert info["backend"] == "cpu"
    assert [t["name"] for t in info["inputs"]] == ["input_0", "input_1"]
    assert len(info["layers"]) >= 3
    state = two_io.__obj_flatten__()
    assert state[0][0] == "state" and state[0][1][0] == rt.STATE_TAG


def test_missing_shapes_are_filled_from_the_plan(plans):
    meta = {"backend": "cpu", "inputs": [dict(name="input_0", **F32)],
            "outputs": [dict(name="output_0", **F32)]}
    engine = rt.make_engine(plans["affine_relu"], meta)
    assert engine.input_shapes() == ["[s0, 4]"] and engine.output_shapes() == ["[s0, 4]"]


# ---------------------------------------------------------------- errors


def test_out_of_profile_shape_names_input_and_range(affine):
    with pytest.raises(RuntimeError, match=r"input 'input_0' dim 0 .*s0.* is 9, outside .*\[1, 8\]"):
        run(affine, torch.randn(9, 4))
    with pytest.raises(RuntimeError, match=r"input_0"):
        run(affine, torch.randn(2, 5))  # constant dim mismatch


def test_wrong_dtype(affine):
    with pytest.raises(RuntimeError,
                       match=r"input 'input_0' \(#0\) must have dtype torch.float32, got torch.float64"):
        run(affine, torch.randn(2, 4, dtype=torch.float64))


def test_wrong_input_count(two_io):
    with pytest.raises(RuntimeError, match=r"takes 2 input\(s\) \['input_0', 'input_1'\], got 1"):
        run(two_io, torch.randn(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_for_cpu_engine(affine):
    with pytest.raises(RuntimeError, match=r"input 'input_0' \(#0\) is on device cuda:0 but this cpu "
                                           r"engine needs device cpu"):
        run(affine, torch.randn(2, 4, device="cuda"))


def _state(plans, name="affine_relu", meta=AFFINE_META):
    return rt.make_state(plans[name], meta)


def test_wrong_tag(plans):
    state = _state(plans)
    state[0] = "ember-engine-v0"
    with pytest.raises(RuntimeError,
                       match=r"expected format tag 'ember-engine-v1' but found 'ember-engine-v0'"):
        torch.classes.ember.Engine(state)
    with pytest.raises(RuntimeError, match=r"3 strings .* got 2"):
        torch.classes.ember.Engine([rt.STATE_TAG, state[1]])


def test_corrupted_base64(plans):
    state = _state(plans)
    bad = list(state)
    bad[1] = state[1][:10] + "!" + state[1][11:]
    with pytest.raises(RuntimeError, match=r"plan base64 has an invalid character at position 10"):
        torch.classes.ember.Engine(bad)
    bad[1] = state[1][:-2]
    with pytest.raises(RuntimeError, match=r"not a multiple of 4"):
        torch.classes.ember.Engine(bad)


def test_corrupted_plan_bytes(plans):
    plan = bytearray(plans["affine_relu"])
    plan[len(plan) // 2] ^= 0xFF
    with pytest.raises(RuntimeError, match=r"the plan does not load: plan"):
        rt.make_engine(bytes(plan), AFFINE_META)


def test_metadata_must_match_plan(plans):
    meta = json.loads(json.dumps(AFFINE_META))
    meta["inputs"][0]["name"] = "x"
    with pytest.raises(RuntimeError, match=r"metadata inputs \[x\] do not match the plan's inputs "
                                           r"\[input_0\]"):
        rt.make_engine(plans["affine_relu"], meta)
    meta = json.loads(json.dumps(TWO_IO_META))
    meta["inputs"][1]["engine_dtype"] = "i64"
    with pytest.raises(RuntimeError, match=r"input 'input_1': metadata engine_dtype i64 but the plan "
                                           r"has i32"):
        rt.make_engine(plans["two_io"], meta)
    meta = json.loads(json.dumps(AFFINE_META))
    meta["outputs"][0]["torch_dtype"] = "float"
    with pytest.raises(RuntimeError, match=r"unknown torch_dtype 'float'"):
        rt.make_engine(plans["affine_relu"], meta)
    meta = json.loads(json.dumps(AFFINE_META))
    meta["backend"] = "cuda"
    with pytest.raises(RuntimeError, match=r"metadata says back end 'cuda' but the plan was built "
                                           r"for 'cpu'"):
        rt.make_engine(plans["affine_relu"], meta)


def test_device_index_in_metadata(plans):
    # Only cuda engines are bound to a GPU; the key must be an integer.
    meta = json.loads(json.dumps(AFFINE_META))
    meta["device_index"] = 0
    with pytest.raises(RuntimeError, match=r"device_index 0 but back end 'cpu'; only cuda engines"):
        rt.make_engine(plans["affine_relu"], meta)
    for bad in ("0", 1.5, -2, True):
        meta["device_index"] = bad
        with pytest.raises(RuntimeError, match=r'"device_index" must be an integer GPU index'):
            rt.make_engine(plans["affine_relu"], meta)
    meta["device_index"] = -1  # "none": accepted, and not written back
    engine = rt.make_engine(plans["affine_relu"], meta)
    assert engine.device_index() == -1
    assert "device_index" not in json.loads(engine.metadata_json())


def test_context_pool_is_bounded(affine):
    # 12 threads at once need up to 12 contexts; once they are given back the pool keeps at most 8
    # per stream (the CPU back end has one "stream"), and the results stay right.
    import threading
    barrier = threading.Barrier(12)
    errors = []

    def work(seed):
        try:
            gen = torch.Generator().manual_seed(seed)
            barrier.wait()
            for _ in range(20):
                x = torch.randn(3, 4, generator=gen)
                (y,) = run(affine, x)
                torch.testing.assert_close(y, torch.relu(x * 2 + 1), rtol=1.3e-6, atol=1e-5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert 1 <= affine.pooled_contexts() <= 8
    assert affine.num_runs() == 240
    # cpu engines never replay graphs: every context counts as layer by layer.
    replays, captures, layer_by_layer, staged = affine.cuda_graph_stats()
    assert (replays, captures, staged) == (0, 0, 0) and layer_by_layer >= 1


def test_malformed_metadata_json(plans):
    state = _state(plans)
    state[2] = state[2][:-3]
    with pytest.raises(RuntimeError, match=r"metadata JSON: .* at offset"):
        torch.classes.ember.Engine(state)
    state[2] = json.dumps({"backend": "cpu", "inputs": []})
    with pytest.raises(RuntimeError, match=r'needs an "outputs" array'):
        torch.classes.ember.Engine(state)


# ---------------------------------------------------------------- serialization


class EngineModule(torch.nn.Module):
    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.ember.execute_engine([x], self.engine)[0] * 3


def test_pickle_round_trip_with_torch_save(affine):
    buf = io.BytesIO()
    torch.save({"engine": affine}, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([torch.ScriptObject]):
        loaded = torch.load(buf)["engine"]
    assert loaded.state() == affine.state()
    x = torch.randn(3, 4)
    torch.testing.assert_close(run(loaded, x)[0], torch.relu(x * 2 + 1))


def test_torchscript_module_round_trip(affine):
    scripted = torch.jit.script(EngineModule(affine))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(6, 4)
    torch.testing.assert_close(loaded(x), torch.relu(x * 2 + 1) * 3)
    assert loaded.engine.state() == affine.state()


def test_fx_graph_module_round_trip(affine):
    gm = torch.fx.symbolic_trace(EngineModule(affine))
    assert "torch.ops.ember.execute_engine" in gm.code
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), torch.relu(x * 2 + 1) * 3)


# ---------------------------------------------------------------- fake tensors and export


def test_fake_tensor_mode_gives_symbolic_output_shapes(two_io):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    runs = two_io.num_runs()
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        n = mode.shape_env.create_unbacked_symint()  # a batch size nobody knows
        a = torch.empty(n, 3)
        b = torch.empty(n, 3, dtype=torch.int64)
        flat, sq = torch.ops.ember.execute_engine([a, b], two_io)
        s0 = a.shape[0]
        assert isinstance(s0, torch.SymInt)
        assert flat.shape[0] == s0 * 3 and flat.dtype == torch.float32
        assert sq.shape == (s0, 3) and sq.dtype == torch.int64
    assert two_io.num_runs() == runs  # nothing executed


def test_dim_expression_evaluator():
    b = {"s0": 7, "s1": 3}
    assert rt.evaluate_dim("s0*3", b) == 21
    assert rt.evaluate_dim("floordiv(s0+1, 2)", b) == 4
    assert rt.evaluate_dim("floordiv(-s0, 2)", b) == -4  # floor, like Python
    assert rt.evaluate_dim("mod(s0, s1)", b) == 1
    assert rt.evaluate_dim("min(s0, 4)*max(s1, 5)-2", b) == 18
    assert rt.evaluate_dim("s0-(s1-1)", b) == 5
    assert rt.evaluate_dim("-3+s0*2", b) == 11
    assert rt.parse_shape("[s0, floordiv(s1, 2), 3]") == ["s0", "floordiv(s1, 2)", "3"]
    assert rt.parse_shape("[]") == []
    with pytest.raises(rt.UnboundSymbolError, match="symbol 's2' has no value"):
        rt.evaluate_dim("s2+1", b)
    for bad in ("__import__('os')", "s0 ** 2", "pow(s0, 2)", "s0 +", "(s0", "1/2"):
        with pytest.raises(rt.DimExprError):
            rt.evaluate_dim(bad, b)


EXPORT_CHILD = textwrap.dedent(
    """
    import importlib.util, os, sys, torch
    spec = importlib.util.spec_from_file_location("ember_runtime_src", sys.argv[1])
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    rt.load_library()  # registers the op and class before torch.export.load
    ep = torch.export.load(sys.argv[2])
    data = torch.load(sys.argv[3])
    out = ep.module()(data["a"], data["b"])
    torch.save({"out": list(out)}, sys.argv[4])
    """
)


class TwoIOModule(torch.nn.Module):
    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    def forward(self, a, b):
        flat, sq = torch.ops.ember.execute_engine([a, b], self.engine)
        return flat.reshape(-1, 3) + a, sq - 1


def test_export_save_load_in_fresh_process(two_io, tmp_path):
    model = TwoIOModule(two_io)
    batch = torch.export.Dim("batch", min=1, max=8)
    a = torch.randn(4, 3)
    b = torch.randint(-9, 9, (4, 3))
    ep = torch.export.export(model, (a, b), dynamic_shapes={"a": {0: batch}, "b": {0: batch}})
    # The engine is a custom-object constant, the op stays one node with symbolic shapes.
    nodes = [n for n in ep.graph.nodes if n.target is torch.ops.ember.execute_engine.default]
    assert len(nodes) == 1
    assert str(nodes[0].meta["val"][0].shape[0]).startswith("3*")
    assert two_io.num_runs() == 0  # export traced with fakes only

    path = str(tmp_path / "model.pt2")
    torch.export.save(ep, path)
    a2, b2 = torch.randn(7, 3), torch.randint(-9, 9, (7, 3))  # another batch size
    torch.save({"a": a2, "b": b2}, str(tmp_path / "in.pt"))
    env = dict(os.environ, EMBER_NATIVE_DIR=os.path.dirname(LIB))
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT_CHILD, RUNTIME_PY, path, str(tmp_path / "in.pt"),
         str(tmp_path / "out.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(str(tmp_path / "out.pt"))["out"]
    torch.testing.assert_close(out[0], (a2 + b2.float()) + a2)
    assert torch.equal(out[1], b2 * b2 - 1)
    # And in this process, the exported program runs the real engine.
    got = ep.module()(a2, b2)
    torch.testing.assert_close(got[0], out[0])


def test_engine_from_plan_is_the_state_constructor_without_base64(plans):
    """make_engine hands the plan over as a view of its bytes (engine_from_plan); the engine has
    the same state list as one made from [tag, base64, metadata], runs the same, and a plan
    that is not a 1-d uint8 CPU tensor or does not load is refused with the usual message."""
    engine = rt.make_engine(plans["affine_relu"], AFFINE_META)
    same = torch.classes.ember.Engine(rt.make_state(plans["affine_relu"], AFFINE_META))
    assert engine.state() == same.state()
    x = torch.randn(5, 4)
    torch.testing.assert_close(torch.ops.ember.execute_engine([x], engine)[0],
                               torch.ops.ember.execute_engine([x], same)[0])
    view = torch.frombuffer(bytearray(plans["affine_relu"]), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"1-d uint8 CPU tensor, got Int"):
        torch.ops.ember.engine_from_plan(view.to(torch.int32), json.dumps(AFFINE_META))
    with pytest.raises(RuntimeError, match=r"the plan does not load"):
        torch.ops.ember.engine_from_plan(view[:100], json.dumps(AFFINE_META))
    with pytest.raises(RuntimeError, match=r"the plan does not load"):
        rt.make_engine(b"", AFFINE_META)

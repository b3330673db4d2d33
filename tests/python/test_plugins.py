"""Plugins (docs/extending.md, "Plugins"): the C++ example plugin library loaded with
ember.load_plugins, automatic plugins for torch.library custom ops (a Python CPU kernel, and a
C++ CPU kernel from the custom-converter example library), several outputs and non-tensor
arguments, dynamic shapes, custom_ops_as_plugins, save/load in a fresh process, and the error
when the loading process lacks the op."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ember

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "converters"))
sys.path.insert(0, os.path.join(HERE, "plugins"))
from harness import assert_close, compile_cpu  # noqa: E402
import plugin_ops as ops  # noqa: E402 - defines the ember_test custom ops

ROOT = os.path.dirname(os.path.dirname(HERE))
PLUGIN_LIB = os.environ.get("EMBER_PLUGIN_EXAMPLE_LIB", os.path.join(
    ROOT, "build", "dev", "examples", "plugin", "libember_plugin_example.so"))
CONVERTER_LIB = os.environ.get("EMBER_CUSTOM_CONVERTER_LIB", os.path.join(
    ROOT, "build", "dev", "examples", "custom_converter", "libember_custom_converter_example.so"))


def _require(path, what):
    if not os.path.isfile(path):
        if os.environ.get("EMBER_REQUIRE_DEPLOY"):
            raise RuntimeError(f"{what} not built at {path} (tools/test.sh builds it)")
        pytest.skip(f"{what} not built ({path})")


def _plugin_layers(gm):
    """(creator, layer name) of every Plugin layer in the engines of a compiled GraphModule."""
    found = []
    for attr in dir(gm):
        obj = getattr(gm, attr, None)
        if isinstance(obj, torch.ScriptObject) and hasattr(obj, "inspect"):
            for layer in json.loads(obj.inspect())["layers"]:
                if layer["type"] == "Plugin":
                    found.append((layer["params"]["creator"], layer["name"]))
    return found


# ---------------------------------------------------------------- the C++ example plugin

@torch.library.custom_op("example::soft_clip", mutates_args=())
def soft_clip(x: torch.Tensor, t: float) -> torch.Tensor:
    return t * torch.tanh(x / t)


@soft_clip.register_fake
def _(x, t):
    return torch.empty_like(x)


class UsesSoftClip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(torch.ops.example.soft_clip(self.fc(x), 1.5)) + x


def test_example_plugin_library_runs_inside_one_engine():
    _require(PLUGIN_LIB, "the plugin example")
    added = ember.load_plugins(PLUGIN_LIB)
    assert ("example::soft_clip", "1") in ember.plugins.plugin_creators()
    assert added in ([("example::soft_clip", "1")], [])  # [] when an earlier test loaded it
    torch.manual_seed(0)
    m = UsesSoftClip().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(m, [x], min_block_size=1)
    assert report.fallback == [] and len(report.engines) == 1, (report.fallback, report.engines)
    assert [c for c, _ in _plugin_layers(gm)] == ["example::soft_clip"]
    with torch.no_grad():
        assert_close(gm(x), m(x))
    with pytest.raises(FileNotFoundError):
        ember.load_plugins("/nonexistent/libnothing.so")


# ---------------------------------------------------------------- automatic plugins

def test_custom_op_without_converter_splits_the_graph_unless_it_is_a_plugin():
    torch.manual_seed(0)
    m = ops.UsesScaledAdd().eval()
    x = torch.randn(3, 8)
    _, report = compile_cpu(m, [x], min_block_size=1)
    assert any(op.startswith("ember_test::scaled_add") for _, op, _ in report.fallback), report.fallback

    ember.dynamo.plugin(torch.ops.ember_test.scaled_add.default)
    try:
        gm, report = compile_cpu(m, [x], min_block_size=1)
        assert report.fallback == [], report.fallback
        assert len(report.engines) == 1, report.engines  # no split
        assert any(op.startswith("ember_test::scaled_add") for op in report.engines[0]["ops"])
        assert [c for c, _ in _plugin_layers(gm)] == ["ember::torch_op"]
        with torch.no_grad():
            assert_close(gm(x), m(x))
    finally:
        ember.dynamo.remove_plugin(torch.ops.ember_test.scaled_add.default)


def test_plugin_with_two_outputs_list_arguments_and_dynamic_batch():
    class M(torch.nn.Module):
        def forward(self, x):
            a, b = torch.ops.ember_test.split_scale(torch.sigmoid(x), 3, [2, -1.0])
            return a.sum(-1, keepdim=True) * b

    ember.dynamo.plugin(torch.ops.ember_test.split_scale)  # the packet: every overload
    try:
        m = M().eval()
        x = torch.randn(4, 5)
        ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=16)},))
        report = ember.dynamo.CompilationReport()
        gm = ember.dynamo.compile(ep, [ember.Input(min_shape=(1, 5), opt_shape=(4, 5), max_shape=(16, 5))],
                                  device="cpu", min_block_size=1, report=report)
        assert report.fallback == [] and len(report.engines) == 1, (report.fallback, report.engines)
        for b in (1, 7, 16):
            x = torch.randn(b, 5)
            assert_close(gm(x), m(x))
    finally:
        ember.dynamo.remove_plugin(torch.ops.ember_test.split_scale)


def test_custom_ops_as_plugins_setting_covers_every_custom_op():
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.ember_test.cube(torch.tanh(x)) * 3.0

    m = M().eval()
    x = torch.randn(2, 6)
    try:
        gm, report = compile_cpu(m, [x], min_block_size=1, custom_ops_as_plugins=True)
        assert report.fallback == [] and len(report.engines) == 1
        assert any("custom_ops_as_plugins: ember_test::cube" in line for line in report.lowering_log)
        assert_close(gm(x), m(x))
        assert "ember_test::cube" in ember.plugins.plugin_ops()
    finally:
        ember.dynamo.remove_plugin(torch.ops.ember_test.cube.default)
    with pytest.raises(TypeError, match="custom_ops_as_plugins"):
        compile_cpu(m, [x], custom_ops_as_plugins="yes")
    with pytest.raises(ValueError, match="PyTorch's own ops"):
        ember.dynamo.plugin(torch.ops.aten.relu.default)


def test_plugin_calls_a_cpp_kernel():
    """my_ops::scaled_tanh's CPU kernel is C++ (examples/custom_converter/scaled_tanh.cpp); with a
    plugin priority above the library's own converter, the engine calls that kernel."""
    _require(CONVERTER_LIB, "the custom converter example")
    ember.load_converters(CONVERTER_LIB)
    from torch._library import simple_registry
    if simple_registry.singleton.find("my_ops::scaled_tanh").fake_impl.kernel is None:
        torch.library.register_fake("my_ops::scaled_tanh")(lambda x, alpha: torch.empty_like(x))

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.my_ops.scaled_tanh(x * 2.0, 0.25) + 1.0

    op = torch.ops.my_ops.scaled_tanh.default
    ember.dynamo.plugin(op, priority=100)
    try:
        m = M().eval()
        x = torch.randn(3, 4)
        gm, report = compile_cpu(m, [x], min_block_size=1)
        assert report.fallback == [] and len(report.engines) == 1
        assert [c for c, _ in _plugin_layers(gm)] == ["ember::torch_op"]
        assert_close(gm(x), m(x))
    finally:
        ember.dynamo.remove_plugin(op)


# ---------------------------------------------------------------- save / load

_LOADER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {plugins_dir!r})
    if {define_op}:
        import plugin_ops  # defines ember_test::scaled_add again in this fresh process
    import ember
    x = torch.load({x_path!r})
    try:
        prog = ember.load({path!r})
    except Exception as e:
        print("LOAD-ERROR:", e)
        sys.exit(3)
    torch.save(prog.module()(x), {out_path!r})
""")


def test_saved_engine_with_a_plugin_loads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    m = ops.UsesScaledAdd().eval()
    x = torch.randn(3, 8)
    ember.dynamo.plugin(torch.ops.ember_test.scaled_add.default)
    try:
        gm, report = compile_cpu(m, [x], min_block_size=1)
        assert len(report.engines) == 1 and report.fallback == []
        path = str(tmp_path / "model.pt2")
        ember.save(gm, path, inputs=[x])
    finally:
        ember.dynamo.remove_plugin(torch.ops.ember_test.scaled_add.default)
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def load(define_op):
        script = _LOADER.format(plugins_dir=os.path.join(HERE, "plugins"), define_op=define_op,
                                x_path=str(tmp_path / "x.pt"), path=path,
                                out_path=str(tmp_path / "y.pt"))
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=300)

    ok = load(True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with torch.no_grad():
        assert_close(torch.load(tmp_path / "y.pt"), m(x))

    missing = load(False)
    assert missing.returncode == 3, missing.stdout + missing.stderr
    assert "ember_test::scaled_add" in missing.stdout, missing.stdout
    assert "is not registered in this process" in missing.stdout, missing.stdout
    assert "ember.dynamo.plugin" in missing.stdout, missing.stdout

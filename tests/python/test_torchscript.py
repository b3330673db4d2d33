"""The TorchScript path (ember.ts, C++ in src/torch/torchscript/): models scripted and traced,
control flow kept in TorchScript, settings, dynamic shapes, save/load in a fresh process, and the
single-engine APIs. Outputs are compared with eager PyTorch at the op harness's tolerances."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ember

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters"))
from harness import assert_close  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LeNetFeat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        return F.max_pool2d(F.relu(self.conv2(x)), 2)


class LeNetClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet(nn.Module):
    """Seed 003's network (feat + classifer)."""

    def __init__(self):
        super().__init__()
        self.feat = LeNetFeat()
        self.classifer = LeNetClassifier()

    def forward(self, x):
        return self.classifer(self.feat(x))


class DataDependent(nn.Module):
    """Data-dependent control flow between two blocks that can become engines."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1),
                               nn.Sigmoid())

    def forward(self, x):
        y = self.a(x)
        if bool(y.mean() > 0.25):
            y = y * 2.0
        else:
            y = y - 1.0
        return self.b(y)


def engine_calls(module: torch.jit.ScriptModule) -> int:
    return str(module.graph).count("ember::execute_engine")


def aten_nodes(module: torch.jit.ScriptModule) -> list[str]:
    """The aten ops left in the compiled method (run by TorchScript)."""
    return [n.kind() for n in module.graph.nodes() if n.kind().startswith("aten::")]


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return LeNet().eval()


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_lenet(lenet, mode):
    x = torch.randn(2, 1, 32, 32)
    ts = torch.jit.script(lenet) if mode == "script" else torch.jit.trace(lenet, x)
    compiled = ember.ts.compile(ts, inputs=[x])
    report = compiled.ember_report
    assert report.num_engines == 1 and report.fallback == [], str(report)
    assert engine_calls(compiled) == 1 and aten_nodes(compiled) == []
    with torch.no_grad():
        assert_close(compiled(x), lenet(x))


def test_lenet_compile_ir_ts(lenet):
    x = torch.randn(1, 1, 32, 32)
    compiled = ember.compile(lenet, ir="ts", inputs=[ember.Input(shape=(1, 1, 32, 32))])
    assert isinstance(compiled, torch.jit.ScriptModule) and engine_calls(compiled) == 1
    with torch.no_grad():
        assert_close(compiled(x), lenet(x))


def test_compile_ir_ts_traces_when_scripting_fails():
    class NotScriptable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, *extra):  # *args cannot be scripted
            return torch.relu(self.fc(x)) * 2 + 1

    m = NotScriptable().eval()
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="tracing with torch.jit.trace"):
        compiled = ember.compile(m, ir="ts", inputs=[x], min_block_size=1)
    with torch.no_grad():
        assert_close(compiled(x), m(x))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_scripted(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 96, 96)  # small images keep CI fast; every layer is still there
    compiled = ember.ts.compile(torch.jit.script(m), inputs=[x])
    report = compiled.ember_report
    assert report.num_engines == 1 and report.fallback == [], str(report)
    assert aten_nodes(compiled) == []
    with torch.no_grad():
        assert_close(compiled(x), m(x))


def test_bert_traced():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    traced = torch.jit.trace(m, (ids,), strict=False)
    compiled = ember.ts.compile(traced, inputs=[ids])
    report = compiled.ember_report
    assert report.num_engines == 1 and report.fallback == [], str(report)
    with torch.no_grad():
        ref = m(ids)
        out = compiled(ids)
    assert_close(out["last_hidden_state"], ref.last_hidden_state)
    assert_close(out["pooler_output"], ref.pooler_output)


def test_data_dependent_control_flow_stays_in_torchscript():
    torch.manual_seed(0)
    m = DataDependent().eval()
    compiled = ember.ts.compile(torch.jit.script(m), inputs=[torch.randn(2, 3, 8, 8)],
                                min_block_size=1)
    nodes = [n.kind() for n in compiled.graph.nodes()]
    assert "prim::If" in nodes
    assert engine_calls(compiled) == 2  # the blocks before and after the If
    assert any("prim::If" in f and "control flow" in f for f in compiled.ember_report.fallback)
    # Both branches are taken by some input.
    taken = set()
    for scale in (0.0, 50.0):
        for seed in range(3):
            torch.manual_seed(seed)
            x = torch.randn(2, 3, 8, 8) + scale
            with torch.no_grad():
                taken.add(bool(m.a(x).mean() > 0.25))
                assert_close(compiled(x), m(x))
    assert taken == {True, False}


def test_require_full_compilation_lists_each_node():
    m = torch.jit.script(DataDependent().eval())
    with pytest.raises(RuntimeError) as info:
        ember.ts.compile(m, inputs=[torch.randn(1, 3, 8, 8)], require_full_compilation=True,
                         min_block_size=1)
    msg = str(info.value)
    assert "require_full_compilation" in msg
    assert "prim::If" in msg and "control flow runs in TorchScript" in msg
    assert "aten::Bool" in msg


def test_torch_executed_ops(lenet):
    x = torch.randn(2, 1, 32, 32)
    compiled = ember.ts.compile(torch.jit.script(lenet), inputs=[x],
                                torch_executed_ops=["aten::max_pool2d"], min_block_size=1)
    assert aten_nodes(compiled).count("aten::max_pool2d") == 2
    assert engine_calls(compiled) == 3
    assert sum("torch_executed_ops" in f for f in compiled.ember_report.fallback) == 2
    with torch.no_grad():
        assert_close(compiled(x), lenet(x))


@pytest.mark.parametrize("module", ["classifer.fc2", "LeNetFeat"])
def test_torch_executed_modules(lenet, module):
    x = torch.randn(2, 1, 32, 32)
    compiled = ember.ts.compile(torch.jit.script(lenet), inputs=[x],
                                torch_executed_modules=[module], min_block_size=1)
    left = aten_nodes(compiled)
    if module == "classifer.fc2":
        assert left.count("aten::linear") == 1
    else:
        assert left.count("aten::conv2d") == 2 and "aten::linear" not in left
    with torch.no_grad():
        assert_close(compiled(x), lenet(x))


def test_min_block_size(lenet):
    x = torch.randn(2, 1, 32, 32)
    compiled = ember.ts.compile(torch.jit.script(lenet), inputs=[x], min_block_size=100)
    assert engine_calls(compiled) == 0 and "aten::linear" in aten_nodes(compiled)
    assert any("min_block_size" in f for f in compiled.ember_report.fallback)
    with torch.no_grad():
        assert_close(compiled(x), lenet(x))


def test_dynamic_batch(lenet):
    spec = ember.Input(min_shape=(1, 1, 32, 32), opt_shape=(4, 1, 32, 32), max_shape=(8, 1, 32, 32))
    compiled = ember.ts.compile(torch.jit.script(lenet), inputs=[spec])
    assert engine_calls(compiled) == 1
    engine = compiled._ember_engine_0
    for b in (1, 3, 8):
        x = torch.randn(b, 1, 32, 32)
        with torch.no_grad():
            assert_close(compiled(x), lenet(x))
    assert engine.num_runs() == 3  # one engine ran every batch: no rebuild
    with pytest.raises(RuntimeError, match=r"input 'x' dim 0 .* is 9, outside the optimization "
                                           r"profile range \[1, 8\]"):
        compiled(torch.randn(9, 1, 32, 32))


def test_dynamic_batch_with_size_arithmetic():
    class Reshapes(nn.Module):
        def forward(self, x):
            n = x.size(0)
            y = torch.relu(x).reshape(n, 2, -1)
            return (y * 2).view(n * 2, x.size(1) // 2) + 1

    m = Reshapes().eval()
    spec = ember.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(16, 8))
    compiled = ember.ts.compile(torch.jit.script(m), inputs=[spec], min_block_size=1)
    assert engine_calls(compiled) == 1 and aten_nodes(compiled) == []
    for b in (1, 5, 16):
        x = torch.randn(b, 8)
        assert_close(compiled(x), m(x))


def test_save_load_fresh_process(lenet, tmp_path):
    x = torch.randn(3, 1, 32, 32)
    spec = ember.Input(min_shape=(1, 1, 32, 32), opt_shape=(2, 1, 32, 32), max_shape=(4, 1, 32, 32))
    compiled = ember.ts.compile(torch.jit.script(lenet), inputs=[spec])
    path = str(tmp_path / "lenet_ember.ts")
    torch.jit.save(compiled, path)
    torch.save({"x": x, "expected": lenet(x).detach()}, str(tmp_path / "io.pt"))
    code = (
        "import sys, torch, ember\n"
        f"m = torch.jit.load({path!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "out = m(io['x'])\n"
        "err = (out - io['expected']).abs().max().item()\n"
        "print('engines', str(m.graph).count('ember::execute_engine'), 'err', err)\n"
        "sys.exit(0 if err <= 1e-4 else 1)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "engines 1" in result.stdout


def test_check_method_op_support(lenet, caplog):
    assert ember.ts.check_method_op_support(torch.jit.script(lenet))
    with caplog.at_level("WARNING", logger="ember"):
        assert not ember.ts.check_method_op_support(torch.jit.script(DataDependent().eval()))
    assert "prim::If: control flow runs in TorchScript" in caplog.text


def test_convert_method_to_engine_and_embed(lenet):
    x = torch.randn(2, 1, 32, 32)
    plan = ember.ts.convert_method_to_engine(torch.jit.script(lenet), "forward", inputs=[x])
    assert isinstance(plan, bytes) and len(plan) > 1000
    module = ember.ts.embed_engine_in_new_module(plan)
    assert engine_calls(module) == 1
    with torch.no_grad():
        assert_close(module(x), lenet(x))
    # The plan alone runs in the torch-free runtime too.
    engine = ember.Engine(plan)
    assert engine is not None


def test_convert_method_to_engine_refuses_fallback():
    with pytest.raises(RuntimeError, match="prim::If"):
        ember.ts.convert_method_to_engine(torch.jit.script(DataDependent().eval()), "forward",
                                          inputs=[torch.randn(1, 3, 8, 8)])


def test_bad_inputs():
    m = torch.jit.script(LeNet().eval())
    with pytest.raises(RuntimeError, match="takes 1 inputs but 2 input specs"):
        ember.ts.compile(m, inputs=[torch.randn(1, 1, 32, 32)] * 2)
    with pytest.raises(TypeError, match="ScriptModule"):
        ember.ts.compile(LeNet(), inputs=[torch.randn(1, 1, 32, 32)])
    with pytest.raises(TypeError, match="unknown setting"):
        ember.ts.compile(m, inputs=[torch.randn(1, 1, 32, 32)], min_blok_size=2)


def test_save_load_torchscript_format(lenet, tmp_path):
    x = torch.randn(2, 1, 32, 32)
    path = str(tmp_path / "ts.ts")
    compiled = ember.compile(lenet, ir="ts", inputs=[x])
    ember.save(compiled, path, output_format="torchscript")
    loaded = ember.load(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    with torch.no_grad():
        assert_close(loaded(x), lenet(x))
    # A dynamo result, traced into TorchScript.
    gm = ember.compile(lenet, inputs=[x])
    path2 = str(tmp_path / "dyn.ts")
    ember.save(gm, path2, output_format="torchscript", inputs=[x])
    loaded2 = ember.load(path2)
    assert engine_calls(loaded2) == 1
    with torch.no_grad():
        assert_close(loaded2(x), lenet(x))
    with pytest.raises(ValueError, match="output_format='torchscript'"):
        ember.save(compiled, str(tmp_path / "x.pt2"))


def test_gpt2_traced():
    """aten::split + prim::ListUnpack import as one IR node; traced Python floats (0-d f64
    tensors) feeding f32 ops are narrowed exactly: one engine, nothing left in TorchScript."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  use_cache=False)
    torch.manual_seed(0)
    m = transformers.GPT2Model(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    traced = torch.jit.trace(m, (ids,), strict=False)
    compiled = ember.ts.compile(traced, inputs=[ids])
    report = compiled.ember_report
    assert report.num_engines == 1 and report.fallback == [], str(report)
    with torch.no_grad():
        assert_close(compiled(ids)["last_hidden_state"], m(ids).last_hidden_state)

"""The dynamo path end to end on the CPU back end: compile, partition, fall back, settings,
dynamic shapes, save/load."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ember
from converters.harness import assert_close, compile_cpu


class LeNet(torch.nn.Module):
    """The seed documents' LeNet: conv-relu-maxpool twice, flatten, three linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 3)
        self.conv2 = torch.nn.Conv2d(6, 16, 3)
        self.fc1 = torch.nn.Linear(16 * 6 * 6, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class WithSpecial(torch.nn.Module):
    """Linear layers around an op Ember has no converter for (aten::i0)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.relu(self.a(x)) + 1.0
        y = torch.special.i0(y)
        return torch.relu(self.b(y)) * 2.0


def engine_calls(gm):
    return [n for n in gm.graph.nodes if n.target is torch.ops.ember.execute_engine.default]


def test_lenet_compiles_whole_and_matches_eager():
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.randn(2, 1, 32, 32)
    gm, report = compile_cpu(model, [x], require_full_compilation=True)
    assert isinstance(gm, torch.fx.GraphModule)
    assert len(engine_calls(gm)) == 1
    assert not report.fallback
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_unsupported_op_falls_back_with_its_reason():
    torch.manual_seed(0)
    model = WithSpecial().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    reasons = {name: why for name, op, why in report.fallback}
    assert any("no converter for aten::i0" in why for why in reasons.values()), report
    assert "aten::i0" in str(report)
    assert len(engine_calls(gm)) == 2
    assert any(n.target is torch.ops.aten.i0.default for n in gm.graph.nodes)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_require_full_compilation_lists_every_unsupported_node():
    model = WithSpecial().eval()
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError) as e:
        compile_cpu(model, [x], require_full_compilation=True)
    assert "require_full_compilation" in str(e.value)
    assert "aten::i0" in str(e.value) and "no converter" in str(e.value)


def test_torch_executed_ops_forces_fallback():
    model = LeNet().eval()
    x = torch.randn(1, 1, 32, 32)
    gm, report = compile_cpu(model, [x], min_block_size=1, torch_executed_ops=["aten::relu"])
    relus = [n for n in gm.graph.nodes if n.target is torch.ops.aten.relu.default]
    assert len(relus) == 4
    assert all("torch_executed_ops" in why for _, op, why in report.fallback if op == "aten::relu")
    with torch.no_grad():
        assert_close(gm(x), model(x))


@pytest.mark.parametrize("spec", [torch.nn.Linear, "Linear", "fc1"])
def test_torch_executed_modules_forces_fallback(spec):
    model = LeNet().eval()
    x = torch.randn(1, 1, 32, 32)
    gm, report = compile_cpu(model, [x], min_block_size=1, torch_executed_modules=[spec])
    fallback_ops = [op for _, op, _ in report.fallback]
    assert "aten::linear" in fallback_ops, report
    assert not any(op == "aten::convolution" for op in fallback_ops)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_min_block_size_counts_compute_nodes():
    model = WithSpecial().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=50)
    assert not engine_calls(gm)
    assert any("below min_block_size 50" in why for _, _, why in report.fallback)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_dryrun_builds_nothing(capsys):
    model = WithSpecial().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1, dryrun=True)
    assert not report.engines
    assert not engine_calls(gm)
    assert "Partition:" in capsys.readouterr().err


def test_unknown_setting_names_the_closest_valid_one():
    ep = torch.export.export(LeNet().eval(), (torch.randn(1, 1, 32, 32),))
    with pytest.raises(TypeError, match="min_block_size"):
        ember.dynamo.compile(ep, min_blok_size=3)
    with pytest.raises(TypeError, match="unknown setting"):
        ember.compile(LeNet().eval(), inputs=[torch.randn(1, 1, 32, 32)], not_a_setting=1)


def test_truncate_long_and_double_alias_is_accepted():
    s = ember.CompileSettings.from_kwargs(truncate_long_and_double=True)
    assert s.truncate_double


def test_global_partitioner_merges_non_adjacent_supported_nodes():
    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x):
            y = self.a(x)                 # supported
            u = torch.special.i0(x)      # unsupported, independent of y
            z = self.b(u)                 # supported, not adjacent to the first linear
            return y + z

    model = TwoBranches().eval()
    x = torch.randn(2, 8)
    g_global, _ = compile_cpu(model, [x], min_block_size=1)
    g_fast, _ = compile_cpu(model, [x], min_block_size=1, use_global_partitioner=False)
    assert len(engine_calls(g_global)) < len(engine_calls(g_fast))
    with torch.no_grad():
        assert_close(g_global(x), model(x))
        assert_close(g_fast(x), model(x))


def test_dynamic_batch_runs_in_range_without_rebuilding_and_rejects_out_of_range(monkeypatch):
    torch.manual_seed(0)
    model = LeNet().eval()
    spec = ember.Input(min_shape=(1, 1, 32, 32), opt_shape=(4, 1, 32, 32),
                       max_shape=(8, 1, 32, 32), name="images")
    builds = []
    real_build = ember._C.build_segment
    monkeypatch.setattr(ember._C, "build_segment",
                        lambda *a: builds.append(1) or real_build(*a))
    gm = ember.compile(model, inputs=[spec], device="cpu", require_full_compilation=True)
    assert len(builds) == 1
    for batch in (1, 3, 8):
        x = torch.randn(batch, 1, 32, 32)
        with torch.no_grad():
            assert_close(gm(x), model(x))
    assert len(builds) == 1  # no rebuild for new shapes inside the range
    with pytest.raises(RuntimeError) as e:
        gm(torch.randn(9, 1, 32, 32))
    msg = str(e.value)
    assert "dim 0" in msg and "[1, 8]" in msg and "9" in msg
    assert "'x'" in msg  # the input's name in the program


def test_unbounded_export_dim_without_a_range_is_a_clear_error():
    x = torch.randn(4, 8)
    ep = torch.export.export(torch.nn.Linear(8, 4).eval(), (x,),
                             dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    with pytest.raises(ValueError, match="dim 0 .* has no upper bound; give it a range"):
        ember.dynamo.compile(ep, [x], device="cpu")


def test_trace_makes_dims_dynamic_from_input_ranges():
    spec = ember.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(16, 8))
    ep = ember.dynamo.trace(torch.nn.Linear(8, 4).eval(), [spec])
    (ph,) = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "input"]
    assert isinstance(ph.meta["val"].shape[0], torch.SymInt)


def test_save_and_load_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = LeNet().eval()
    spec = ember.Input(min_shape=(1, 1, 32, 32), opt_shape=(2, 1, 32, 32), max_shape=(4, 1, 32, 32))
    gm = ember.compile(model, inputs=[spec], device="cpu", min_block_size=1)
    path = tmp_path / "lenet.pt2"
    ember.save(gm, str(path), inputs=[spec])
    x = torch.randn(3, 1, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch, ember
        prog = ember.load({str(path)!r}).module()
        x = torch.load({str(tmp_path / 'x.pt')!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        got = prog(x)
        got = got[0] if isinstance(got, (list, tuple)) else got
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        n = sum(1 for node in prog.graph.nodes if 'execute_engine' in str(node.target))
        assert n >= 1, n
        print('OK', n)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_save_leaves_no_partial_file_on_failure(tmp_path):
    gm, _ = compile_cpu(LeNet(), [torch.randn(1, 1, 32, 32)], min_block_size=1)
    path = tmp_path / "bad.pt2"
    with pytest.raises(ValueError):
        ember.save(gm, str(path), output_format="onnx", inputs=[torch.randn(1, 1, 32, 32)])
    with pytest.raises(Exception):
        ember.save(gm, str(path), inputs=[torch.randn(1, 3, 5)])  # wrong rank: export fails
    assert os.listdir(tmp_path) == []


def test_load_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        ember.load(str(tmp_path / "nope.pt2"))

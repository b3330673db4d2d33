"""Autocast (issue 17, section 1) end to end on the CPU back end: outputs within the harness's
f16/bf16 tolerances against eager f32, which nodes stay f32 and why, the calibration-driven
threshold, the deprecated spellings, and clear errors for bad settings. The rules themselves
are tested as IR text in tests/cpp/compiler/autocast_test.cpp."""

import json
import os
import warnings

import pytest
import torch

import ember
from ember import _precision
from ember.dynamo import CompilationReport

from converters.harness import TOLERANCES, assert_close

torch.manual_seed(0)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return torch.softmax(self.fc(y.flatten(1)), -1)


class Block(torch.nn.Module):
    """A transformer-style MLP block: layer norm and softmax stay f32 by the rule table."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(32)
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32)

    def forward(self, x):
        h = self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        return torch.log_softmax(x + h, -1)


def compile_with(model, inputs, report=None, **settings):
    ep = torch.export.export(model.eval(), tuple(inputs))
    return ember.dynamo.compile(ep, list(inputs), device="cpu", min_block_size=1,
                                report=report if report is not None else CompilationReport(),
                                **settings)


def check_against_f32(model, inputs, dtype, **settings):
    """Compiles with autocast to `dtype`, checks it against eager f32 with the harness's
    tolerance for `dtype`, and that it is not simply the f32 engine (precision changed)."""
    report = CompilationReport()
    gm = compile_with(model, inputs, report, **settings)
    with torch.no_grad():
        expected = model(*inputs)
        got = gm(*inputs)
        exact = compile_with(model, inputs)(*inputs)
    assert got.dtype == torch.float32  # outputs keep the model's dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    assert not torch.equal(got, exact), "autocast changed nothing"
    line = next(l for l in report.lowering_log if l.startswith("autocast:"))
    assert int(line.split()[1]) > 0, line
    return report


@pytest.mark.parametrize("model_cls,shape", [(ConvNet, (2, 3, 8, 8)), (Block, (4, 6, 32))])
def test_autocast_f16_within_f16_tolerance(model_cls, shape):
    model = model_cls().eval()
    report = check_against_f32(model, [torch.randn(*shape)], torch.float16, enable_autocast=True)
    kept = {op for _, op, _ in report.autocast_kept}
    if model_cls is Block:
        assert {"aten::layer_norm", "aten::_log_softmax"} & kept or any(
            "layer_norm" in op for op in kept), kept
    assert any("softmax" in op for op in kept), kept
    assert all(why.startswith("rule table") for _, _, why in report.autocast_kept)


def test_autocast_bf16_within_bf16_tolerance():
    model = Block().eval()
    check_against_f32(model, [torch.randn(4, 6, 32)], torch.bfloat16, enable_autocast=True,
                      autocast_low_precision_type=torch.bfloat16)


def test_report_lists_nodes_kept_in_f32_and_why(capsys):
    report = CompilationReport()
    compile_with(ConvNet().eval(), [torch.randn(2, 3, 8, 8)], report, enable_autocast=True,
                 autocast_excluded_nodes={"^linear$"}, debug=True)
    kept = {name: why for name, _, why in report.autocast_kept}
    assert kept["linear"] == "autocast_excluded_nodes: '^linear$' matches 'linear'"
    assert kept["softmax"].startswith("rule table (softmax)")
    text = str(report)
    assert "Kept in f32 by autocast:" in text and "linear (aten::linear)" in text
    assert "autocast keeps linear (aten::linear) in f32" in capsys.readouterr().err


def test_excluded_ops_and_module_paths():
    report = CompilationReport()
    compile_with(Block().eval(), [torch.randn(4, 6, 32)], report, enable_autocast=True,
                 autocast_excluded_ops={torch.ops.aten.gelu.default},
                 autocast_excluded_nodes={r"^up$"})
    reasons = {name: why for name, _, why in report.autocast_kept}
    assert reasons["gelu"] == "autocast_excluded_ops: 'aten::gelu'"
    # "up" is the module path of the first linear (its node is named "linear").
    assert reasons["linear"] == "autocast_excluded_nodes: '^up$' matches 'up'"


class Overflow(torch.nn.Module):
    """An intermediate of ~1e5 (past f16's 65504) scaled back down: f16 gives inf there."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        big = self.fc(x) * 1e5
        return torch.relu(big * 1e-5) + 1.0


def test_calibration_threshold_keeps_large_values_in_f32():
    model = Overflow().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x)
    report = CompilationReport()
    # Calibrated on two batches: the scaled value is ~1e5 > 512, so the multiplies stay f32.
    gm = compile_with(model, [x], report, enable_autocast=True,
                      autocast_calibration_dataloader=[(torch.randn(4, 16),), (x,)])
    reasons = [why for _, _, why in report.autocast_kept]
    assert any("autocast_max_output_threshold 512" in why and "output 'mul'" in why
               for why in reasons), reasons
    with torch.no_grad():
        got = gm(x)
    atol, rtol = TOLERANCES[torch.float16]
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)

    # A threshold above the measured values judges nothing: the product overflows f16.
    report = CompilationReport()
    gm = compile_with(model, [x], report, enable_autocast=True,
                      autocast_max_output_threshold=1e9,
                      autocast_calibration_dataloader=[(x,)])
    assert not any("threshold" in why for _, _, why in report.autocast_kept)
    with torch.no_grad():
        assert not torch.isfinite(gm(x)).all()


def test_measured_magnitudes_are_per_node_maxima():
    model = Overflow().eval()
    ep = torch.export.export(model, (torch.randn(4, 16),)).run_decompositions(
        ember.dynamo.decomposition_table())
    a, b = torch.zeros(4, 16), torch.randn(4, 16) * 3
    m = _precision.measure_magnitudes(ep, ["x"], [(a,), (b,)])
    assert m["x"] == pytest.approx(float(b.abs().max()))
    with torch.no_grad():
        big = (model.fc(b) * 1e5).abs().max()
    assert m["mul"] == pytest.approx(float(big), rel=1e-6)


def test_enabled_precisions_half_is_deprecated_autocast(monkeypatch):
    monkeypatch.setattr(_precision, "_warned", set())
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(FutureWarning, match="enabled_precisions is deprecated.*enable_autocast"):
        a = compile_with(model, [x], enabled_precisions={torch.half})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # once per process
        s = ember.CompileSettings.from_kwargs(enabled_precisions={torch.float16, torch.float32})
    assert s.enable_autocast and s.autocast_low_precision_type == torch.float16
    b = compile_with(model, [x], enable_autocast=True)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_use_explicit_typing_false_is_deprecated_autocast(monkeypatch):
    monkeypatch.setattr(_precision, "_warned", set())
    with pytest.warns(FutureWarning, match="use_explicit_typing=False is deprecated"):
        s = ember.CompileSettings.from_kwargs(use_explicit_typing=False)
    assert s.enable_autocast and s.to_compiler()["autocast_low_precision_type"] == "f16"
    s = ember.CompileSettings.from_kwargs(enabled_precisions={torch.bfloat16})
    assert s.to_compiler()["autocast_low_precision_type"] == "bf16"


@pytest.mark.parametrize("kwargs,error,match", [
    ({"enabled_precisions": {torch.int8}}, ValueError, "INT8 and FP8 engines come from a quantized model"),
    ({"enabled_precisions": {torch.float64}}, ValueError, "unsupported precision 'float64'"),
    ({"enabled_precisions": {torch.half, torch.bfloat16}}, ValueError, "pick one"),
    ({"enabled_precisions": 16}, TypeError, "must be a set of dtypes"),
    ({"enable_autocast": True, "autocast_low_precision_type": torch.int8}, ValueError,
     "must be torch.float16 or torch.bfloat16"),
    ({"enable_autocast": "yes"}, TypeError, "enable_autocast must be True or False"),
    ({"use_fp32_acc": 1}, TypeError, "use_fp32_acc must be True or False"),
    ({"autocast_excluded_nodes": "conv"}, TypeError, "must be a set or list"),
    ({"autocast_excluded_nodes": {"conv("}}, ValueError, "not a valid regular expression"),
    ({"autocast_excluded_nodes": {3}}, TypeError, "holds regular expressions"),
    ({"autocast_max_output_threshold": -1}, ValueError, "must be a number >= 0"),
    ({"autocast_max_output_threshold": "big"}, ValueError, "must be a number >= 0"),
    ({"autocast_max_depth_of_reduction": 0}, ValueError, "None or an int >= 1"),
    ({"autocast_calibration_dataloader": torch.zeros(2)}, TypeError, "iterable of batches"),
])
def test_bad_settings_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ember.CompileSettings.from_kwargs(**kwargs)


@pytest.mark.parametrize("data,match", [
    ([], "yielded no batches"),
    ([(torch.randn(4, 17),)], r"batch 0 input 0 \('x'\) has shape \[4, 17\], the program "
                              r"expects \[4, 16\]"),
    ([(torch.randn(4, 16), torch.randn(4, 16))], "batch 0 has 2 inputs, the program takes 1"),
    ([(torch.randn(4, 16).double(),)], "has dtype torch.float64, the program expects"),
    ([{"x": torch.randn(4, 16)}], "is a dict"),
])
def test_bad_calibration_sets_are_clear_errors(data, match):
    with pytest.raises((ValueError, TypeError), match=match):
        compile_with(Overflow().eval(), [torch.randn(4, 16)], enable_autocast=True,
                     autocast_calibration_dataloader=data)


def test_rule_table_is_documented():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "precision.md")).read()
    missing = [op for op, _, _ in ember._C.autocast_rules() if f"`{op}`" not in doc]
    assert not missing, f"docs/precision.md does not list {missing}"


# ---------------------------------------------------------------------------------------------
# ember.debug.compare (issue 17, section 3)

class Planted(torch.nn.Module):
    """conv -> relu -> a scale that overflows f16 (the planted bad layer) -> back down -> fc."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x)) + 0.5
        y = y * 3e5          # |y| > 65504: inf in f16
        y = y * (1 / 3e5)
        return self.fc(y.flatten(1))


def test_compare_finds_the_planted_overflow_as_worst(tmp_path):
    model = Planted().eval()
    x = torch.randn(2, 3, 6, 6)
    # The threshold rule would keep the scale in f32 (that is its job); turn it off to plant.
    settings = {"enable_autocast": True, "min_block_size": 1, "device": "cpu",
                "autocast_max_output_threshold": 1e30}
    report = ember.debug.compare(model, settings, [x])
    assert report.worst is not None and report.worst.op == "aten::mul.Tensor"
    assert report.worst.dtype == "f16" and report.worst.where == "engine"
    assert report.worst.ref_max_abs > 65504
    assert report.first_jump is report.worst
    # Layers before it are fine; the report covers the whole graph.
    before = [e for e in report.layers if e.index < report.worst.index]
    assert before and all(e.rel_error < 5e-3 and e.cosine > 0.9999 for e in before)
    assert {"aten::conv2d", "aten::relu", "aten::linear"} <= {e.op for e in report.layers}
    assert report.worst.node in report.suggestion()
    text = str(report)
    assert "<- first jump <- worst" in text and "suggestion: keep" in text
    data = json.loads(report.to_json(str(tmp_path / "acc.json")))
    assert data["worst"] == report.worst.node
    assert json.loads((tmp_path / "acc.json").read_text())["first_jump"] == report.worst.node

    # The suggestion says the readers of the overflowing value need f32 too; keeping both
    # scales in f32 fixes the output.
    assert "the layers reading it need f32 too" in report.suggestion()
    settings["autocast_excluded_nodes"] = {r"^mul(_1)?$"}
    fixed = ember.debug.compare(model, settings, [x])
    assert fixed.outputs[0].rel_error < 5e-3


def test_compare_takes_a_compiled_module_and_reports_f32_engines():
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = ember.compile(model, inputs=[x], device="cpu", min_block_size=1)
    report = ember.debug.compare(model, gm, [x])
    assert report.layers and all(e.dtype == "f32" for e in report.layers if e.where == "engine")
    assert report.outputs[0].rel_error < 1e-4
    assert report.suggestion() == "no layer stands out"


def test_compare_bad_arguments():
    model = ConvNet().eval()
    with pytest.raises(TypeError, match="inputs must be a non-empty list"):
        ember.debug.compare(model, {}, torch.randn(2, 3, 8, 8))
    with pytest.raises(TypeError, match="second argument must be settings"):
        ember.debug.compare(model, 3, [torch.randn(2, 3, 8, 8)])


class Residual(torch.nn.Module):
    """A residual whose branch has a node forced to PyTorch: the engine on each side meets
    PyTorch at f32 boundaries while computing in f16 inside."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 16)

    def forward(self, x):
        h = self.a(x)
        t = torch.tanh(h)            # forced to PyTorch below
        return self.b(h + t) + h


@pytest.mark.parametrize("global_partitioner", [True, False])
def test_autocast_across_pytorch_fallback(global_partitioner):
    model = Residual().eval()
    x = torch.randn(4, 16)
    report = CompilationReport()
    gm = compile_with(model, [x], report, enable_autocast=True,
                      torch_executed_ops={"aten::tanh"},
                      use_global_partitioner=global_partitioner)
    assert [f[0] for f in report.fallback] == ["tanh"]
    kept = {name: why for name, _, why in report.autocast_kept}
    assert kept["tanh"].startswith("runs in PyTorch: in torch_executed_ops")
    assert len(report.engines) >= 1
    with torch.no_grad():
        got, expected = gm(x), model(x)
    assert got.dtype == torch.float32
    atol, rtol = TOLERANCES[torch.float16]
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def test_use_fp32_acc_is_accepted_and_changes_nothing():
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    a = compile_with(model, [x], enable_autocast=True, use_fp32_acc=True)
    b = compile_with(model, [x], enable_autocast=True)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_autocast_with_dynamic_batch_and_input_specs(caplog):
    model = Block().eval()
    spec = ember.Input(min_shape=(1, 6, 32), opt_shape=(4, 6, 32), max_shape=(8, 6, 32))
    with caplog.at_level("INFO", logger="ember"):
        gm = ember.compile(model, inputs=[spec], device="cpu", min_block_size=1,
                           enable_autocast=True)
    assert "judges nothing" in caplog.text  # no sample data: the threshold rule is idle
    atol, rtol = TOLERANCES[torch.float16]
    for batch in (1, 3, 8):
        x = torch.randn(batch, 6, 32)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), atol=atol, rtol=rtol)


def test_compare_reports_pytorch_fallback_layers():
    model = Residual().eval()
    x = torch.randn(4, 16)
    report = ember.debug.compare(model, {"enable_autocast": True, "min_block_size": 1,
                                         "device": "cpu", "torch_executed_ops": {"aten::tanh"}},
                                 [x])
    rows = {e.node: e for e in report.layers}
    assert rows["tanh"].where == "pytorch" and rows["tanh"].dtype == "f32"
    assert rows["linear"].where == "engine" and rows["linear"].dtype == "f16"
    assert report.outputs[0].rel_error < 5e-3


def test_autocast_program_saves_and_loads(tmp_path):
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = ember.compile(model, inputs=[x], device="cpu", min_block_size=1, enable_autocast=True)
    path = str(tmp_path / "autocast.pt2")
    ember.save(gm, path, inputs=[x])
    loaded = ember.load(path).module()
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))

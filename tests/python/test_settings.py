"""Settings semantics and validation (issue 13, section 4): wrong types and names that match
nothing are clear errors or warnings, optimization_level accepts only levels that differ,
workspace_size never fails a build, the device comes from the program, ember.load names a file
that is not a saved program."""

import os
import warnings

import pytest
import torch

import ember
from converters.harness import assert_close


def small_program(model=None, x=None):
    model = (model or torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())).eval()
    x = torch.randn(2, 8) if x is None else x
    return model, x, torch.export.export(model, (x,))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"torch_executed_ops": "aten::add"}, TypeError,
     ["torch_executed_ops", "list", "['aten::add']"]),
    ({"torch_executed_modules": "Linear"}, TypeError, ["torch_executed_modules", "list"]),
    ({"torch_executed_ops": [3]}, TypeError, ["torch_executed_ops", "int"]),
    ({"torch_executed_ops": ["aten::definitely_not_an_op"]}, ValueError, ["names no PyTorch op"]),
    ({"torch_executed_ops": ["aten::add.NotAnOverload"]}, ValueError, ["names no PyTorch op"]),
    ({"require_full_compilation": 1}, TypeError, ["require_full_compilation", "True or False"]),
    ({"debug": "yes"}, TypeError, ["debug", "True or False"]),
    ({"cuda_graphs": 0}, TypeError, ["cuda_graphs"]),
    ({"min_block_size": 2.5}, TypeError, ["min_block_size", "int"]),
    ({"min_block_size": True}, TypeError, ["min_block_size", "int"]),
    ({"min_block_size": 0}, ValueError, ["min_block_size"]),
    ({"optimization_level": "3"}, TypeError, ["optimization_level", "int"]),
    ({"optimization_level": 5}, ValueError, ["optimization_level", "use 3"]),
    ({"optimization_level": -1}, ValueError, ["optimization_level"]),
    ({"workspace_size": -1}, ValueError, ["workspace_size"]),
    ({"device": "gpu"}, ValueError, ["device", "'gpu'"]),
    ({"device": 0}, TypeError, ["device"]),
    ({"device": "cuda:x"}, ValueError, ["cuda:<index>"]),
    ({"channels_last": 1}, ValueError, ["channels_last"]),
])
def test_wrong_settings_are_clear_errors(kwargs, error, words):
    with pytest.raises(error) as e:
        ember.CompileSettings.from_kwargs(**kwargs)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_valid_settings_forms_are_accepted():
    s = ember.CompileSettings.from_kwargs(
        torch_executed_ops=["aten::add", "aten.mul.Tensor", torch.ops.aten.relu.default,
                            torch.ops.aten.sub],
        torch_executed_modules={torch.nn.Linear, "layer1.0"}, optimization_level=0,
        device=torch.device("cpu"))
    assert s.to_compiler()["torch_executed_ops"] == ["aten::add", "aten::mul.Tensor",
                                                     "aten::relu", "aten::sub"]


def test_executed_names_that_match_nothing_warn():
    _, x, ep = small_program()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1,
                             torch_executed_ops=["aten::conv2d"],
                             torch_executed_modules=["Conv2d", "encoder.layer0"])
    messages = [str(w.message) for w in caught]
    assert any("'aten::conv2d' matches no node" in m and "aten::linear" in m
               for m in messages), messages
    assert any("'Conv2d' matches no module" in m and "Linear" in m for m in messages), messages
    assert any("'encoder.layer0' matches no module" in m for m in messages), messages


def test_executed_names_that_match_do_not_warn():
    _, x, ep = small_program()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1,
                             torch_executed_ops=["aten::relu"], torch_executed_modules=["0"])
    assert not [w for w in caught if "matches no" in str(w.message)]


def test_optimization_levels_each_change_the_build():
    """Level 1 adds constant folding, 2 fusion, 3 layout: the build logs differ level to level."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    ep = torch.export.export(model, (x,))
    logs = {}
    for level in (0, 1, 2, 3):
        report = ember.dynamo.CompilationReport()
        gm = ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1, report=report,
                                  optimization_level=level, channels_last=True)
        logs[level] = " ".join(report.engines[0]["build_log"])
        with torch.no_grad():
            assert_close(gm(x), model(x))
    assert "fold_constants: skipped" in logs[0]
    assert "fold_constants: skipped" not in logs[1] and "fuse_epilogues: skipped" in logs[1]
    assert "fuse_epilogues: skipped" not in logs[2] and "channels_last: skipped" in logs[2]
    assert "channels_last: skipped" not in logs[3]


def test_workspace_size_never_fails_a_build():
    """It used to cap activation memory, and a small value failed every build into a silent
    fallback; now it is Torch-TensorRT's tactic scratch cap, not applied, with one warning."""
    model, x, ep = small_program()
    report = ember.dynamo.CompilationReport()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1, workspace_size=16,
                                  report=report)
    assert report.engines and not report.build_failures and not report.fallback, report
    assert len([w for w in caught if "workspace_size=16 is not applied" in str(w.message)]) == 1
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_truncate_double_keeps_wide_i64_constants_in_pytorch():
    class AddWide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.tensor([1, 1 << 40], dtype=torch.int64))

        def forward(self, x):
            return (x + 3) * 2 + self.offset

    model = AddWide().eval()
    x = torch.tensor([5, -6], dtype=torch.int64)
    ep = torch.export.export(model, (x,))
    report = ember.dynamo.CompilationReport()
    gm = ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1, truncate_double=True,
                              report=report)
    reasons = [why for _, op, why in report.fallback]
    assert any("outside int32" in why and str(1 << 40) in why for why in reasons), report
    assert report.engines, report
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    with pytest.raises(RuntimeError, match="outside int32"):
        ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1, truncate_double=True,
                             require_full_compilation=True)


def test_default_device_comes_from_the_program_not_the_machine(monkeypatch):
    """A CPU model compiles for the CPU back end even when the machine has a GPU."""
    model, x, ep = small_program()
    assert ember.dynamo._program_device(ep) == torch.device("cpu")
    gm = ember.dynamo.compile(ep, [x], min_block_size=1)
    assert gm._ember_engine_0.backend() == "cpu"
    # As on a GPU machine (torch's own export code must not see the fake GPU, so only here):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ember.CompileSettings().resolve_device(torch.device("cpu")) == ("cpu", None)
    assert ember.CompileSettings().backend() == "cpu"


def test_cuda_device_index_is_parsed_and_checked():
    s = ember.CompileSettings.from_kwargs(device="cuda:1")
    assert s.device_type() == "cuda"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        with pytest.raises((ValueError, RuntimeError), match="cuda:1"):
            s.resolve_device()
        model, x, ep = small_program()
        with pytest.raises((ValueError, RuntimeError), match="cuda:1"):
            ember.dynamo.compile(ep, [x], device="cuda:1")


def test_cuda_engines_record_their_device_index(monkeypatch):
    """meta["device_index"] (read by the C++ Engine) is the index the settings resolve to."""
    if "cuda" not in ember.available_backends():
        pytest.skip("this Ember build has no CUDA back end")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert ember.CompileSettings(device="cuda:2").resolve_device() == ("cuda", 2)
    assert ember.CompileSettings().resolve_device(torch.device("cuda:1")) == ("cuda", 1)
    assert ember.CompileSettings().resolve_device(torch.device("cpu")) == ("cpu", None)


def test_load_of_a_file_that_is_not_a_saved_program(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError) as e:
        ember.load(str(text))
    assert str(text) in str(e.value) and "ember.save" in str(e.value)
    checkpoint = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, checkpoint)
    with pytest.raises(ValueError) as e:
        ember.load(str(checkpoint))
    assert str(checkpoint) in str(e.value) and "torch.load" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        ember.load(str(tmp_path / "missing.pt2"))

"""The `timing_cache` compile setting: validation, the file written atomically, corrupt files
rejected clearly (all on the CPU), and on a GPU a second compile that times nothing (skipped
visibly without one)."""

import os
import stat

import pytest
import torch

import ember
from ember import _C, _timing_cache


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def compile_small(device, path, **kw):
    torch.manual_seed(0)
    model = Small().eval()
    if device == "cuda":
        model = model.cuda()
    x = torch.randn(2, 3, 8, 8, device=device)
    report = ember.dynamo.CompilationReport()
    ep = torch.export.export(model, (x,))
    gm = ember.dynamo.compile(ep, [x], device=device, min_block_size=1, report=report,
                              timing_cache=path, **kw)
    return model, x, gm, report


def leftovers(directory):
    return [f for f in os.listdir(directory) if f.startswith(".ember-timing-")]


def test_setting_must_be_a_path():
    with pytest.raises(TypeError, match="timing_cache must be a file path"):
        ember.CompileSettings.from_kwargs(timing_cache=3)
    with pytest.raises(TypeError, match="timing_cache must be a file path"):
        ember.CompileSettings.from_kwargs(timing_cache=b"cache.bin")
    assert ember.CompileSettings.from_kwargs(timing_cache=None).timing_cache is None


def test_misspelled_setting_names_timing_cache():
    with pytest.raises(TypeError, match="timing_cache"):
        ember.CompileSettings.from_kwargs(timing_cach="x.bin")


def test_cpu_compile_writes_an_empty_cache_file(tmp_path):
    path = tmp_path / "ember.timing"
    _, _, _, report = compile_small("cpu", path)
    assert report.engines
    data = path.read_bytes()
    assert data.startswith(b"EMBRTCAC")
    assert len(_C.TimingCache.from_bytes(data)) == 0  # the CPU back end times nothing
    assert not leftovers(tmp_path)
    # A second compile loads the file it wrote (a str path works too).
    compile_small("cpu", str(path))
    assert path.read_bytes() == data


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.timing"
    path.write_bytes(b"not a cache at all")
    with pytest.raises(ValueError, match="cannot be loaded.*not an Ember timing cache"):
        compile_small("cpu", path)
    assert path.read_bytes() == b"not a cache at all"  # left alone


def test_save_is_atomic(tmp_path):
    path = tmp_path / "c.timing"
    path.write_bytes(_C.TimingCache().serialize())
    before = path.read_bytes()

    class Failing:
        def serialize(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _timing_cache.save(Failing(), path)
    assert path.read_bytes() == before
    assert not leftovers(tmp_path)
    assert _timing_cache.load(tmp_path / "missing.timing") is not None
    assert _timing_cache.load(None) is None


def test_save_keeps_the_file_mode_and_names_a_missing_folder(tmp_path):
    path = tmp_path / "cache.timing"
    path.write_bytes(b"")
    os.chmod(path, 0o640)
    _timing_cache.save(_C.TimingCache(), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # not mkstemp's 0600
    missing = tmp_path / "no_such_folder" / "cache.timing"
    with pytest.raises(ValueError, match="no_such_folder.*does not exist"):
        _timing_cache.save(_C.TimingCache(), missing)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif("cuda" not in ember.available_backends(), reason="no CUDA back end")
def test_cuda_second_compile_times_nothing(tmp_path, monkeypatch):
    # The f32 reference must not use TF32 (as in test_cuda.py).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    path = tmp_path / "gpu.timing"
    model, x, gm, report = compile_small("cuda", path)
    cache = _C.TimingCache.from_bytes(path.read_bytes())
    assert len(cache) >= 2  # the convolution and the linear layer
    logs = [line for e in report.engines for line in e["build_log"]]
    assert any(l.startswith("time_tactics:") and " 0 timed" not in l for l in logs), logs
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-3, rtol=1e-3)
    _, _, gm2, report2 = compile_small("cuda", path)
    logs2 = [line for e in report2.engines for line in e["build_log"]]
    timing = [l for l in logs2 if l.startswith("time_tactics:")]
    assert timing and all(" 0 timed" in l for l in timing), logs2
    with torch.no_grad():
        torch.testing.assert_close(gm2(x), model(x), atol=1e-3, rtol=1e-3)

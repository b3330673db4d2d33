"""The engine cache (CPU back end): hits in a fresh process, misses when the engine would
differ, names that don't matter, eviction, corrupt entries, two processes at once, a custom
cache, and the settings' errors."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ember
from converters.harness import assert_close
from test_dynamo import LeNet


@pytest.fixture(autouse=True)
def zero_stats():
    ember.engine_cache.reset_stats()


def stats():
    return ember.engine_cache.stats()


def cache_settings(directory, **kw):
    return dict(device="cpu", cache_built_engines=True, reuse_cached_engines=True,
                engine_cache_dir=str(directory), **kw)


def compile_lenet(model, x, **kw):
    report = ember.dynamo.CompilationReport()
    gm = ember.dynamo.compile(torch.export.export(model, (x,)), [x], report=report, **kw)
    return gm, report


def entries(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".ember-engine"))


def lenet_and_input(seed=0):
    torch.manual_seed(seed)
    return LeNet().eval(), torch.randn(2, 1, 32, 32)


# A script that compiles the seeded LeNet with the cache in argv[1] and prints the counters.
SCRIPT = textwrap.dedent("""
    import sys, torch, ember
    sys.path.insert(0, {tests!r})
    from test_dynamo import LeNet
    torch.manual_seed(0)
    model, x = LeNet().eval(), torch.randn(2, 1, 32, 32)
    gm = ember.dynamo.compile(torch.export.export(model, (x,)), [x], device="cpu",
                              cache_built_engines=True, reuse_cached_engines=True,
                              engine_cache_dir=sys.argv[1])
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-4, rtol=1e-4)
    s = ember.engine_cache.stats()
    print("builds", s["builds"], "hits", s["hits"])
""").format(tests=os.path.dirname(os.path.abspath(__file__)))


def run_script(directory):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_two_processes_at_once_then_a_hit_in_a_fresh_process(tmp_path):
    """Two processes build the same key into an empty cache at the same time: both succeed,
    one complete entry remains, and a third, fresh process builds nothing."""
    procs = [run_script(tmp_path) for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert all("builds" in o for o in outs)
    assert len(entries(tmp_path)) == 1
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".ember-")]
    assert not leftovers, "a temporary file was left"
    assert "builds 0 hits 1" in finish(run_script(tmp_path))


def test_same_process_hit_and_report(tmp_path):
    model, x = lenet_and_input()
    gm1, r1 = compile_lenet(model, x, **cache_settings(tmp_path))
    gm2, r2 = compile_lenet(model, x, **cache_settings(tmp_path))
    assert [e["cached"] for e in r1.engines] == [False]
    assert [e["cached"] for e in r2.engines] == [True]
    assert r1.engines[0]["key"] == r2.engines[0]["key"]
    assert stats()["builds"] == 1 and stats()["hits"] == 1
    with torch.no_grad():
        assert_close(gm2(x), model(x))


def test_node_names_and_module_paths_do_not_change_the_key(tmp_path):
    model, x = lenet_and_input()
    wrapped = torch.nn.Sequential(torch.nn.Identity(), model).eval()  # other fx and module names
    _, r1 = compile_lenet(model, x, **cache_settings(tmp_path))
    _, r2 = compile_lenet(wrapped, x, **cache_settings(tmp_path))
    assert r1.engines[0]["key"] == r2.engines[0]["key"]
    assert stats()["builds"] == 1


def test_a_build_setting_change_misses(tmp_path):
    model, x = lenet_and_input()
    compile_lenet(model, x, **cache_settings(tmp_path, optimization_level=3))
    _, r = compile_lenet(model, x, **cache_settings(tmp_path, optimization_level=1))
    assert [e["cached"] for e in r.engines] == [False]
    assert stats()["builds"] == 2 and len(entries(tmp_path)) == 2
    # A partitioning-only setting that leaves the segment the same still hits.
    _, r = compile_lenet(model, x, **cache_settings(tmp_path, min_block_size=2))
    assert [e["cached"] for e in r.engines] == [True]


def test_other_weights_miss(tmp_path):
    model, x = lenet_and_input(0)
    compile_lenet(model, x, **cache_settings(tmp_path))
    other, _ = lenet_and_input(1)
    gm, r = compile_lenet(other, x, **cache_settings(tmp_path))
    assert [e["cached"] for e in r.engines] == [False]
    with torch.no_grad():
        assert_close(gm(x), other(x))


def test_input_ranges_are_in_the_key(tmp_path):
    model, x = lenet_and_input()
    spec = ember.Input(min_shape=(1, 1, 32, 32), opt_shape=(2, 1, 32, 32), max_shape=(8, 1, 32, 32))
    compile_lenet(model, x, **cache_settings(tmp_path))
    gm = ember.compile(model, inputs=[spec], **cache_settings(tmp_path))
    assert stats()["builds"] == 2
    with torch.no_grad():
        x5 = torch.randn(5, 1, 32, 32)
        assert_close(gm(x5), model(x5))


def test_eviction_keeps_the_cache_under_its_size(tmp_path):
    model, x = lenet_and_input(0)
    compile_lenet(model, x, **cache_settings(tmp_path))
    (first,) = entries(tmp_path)
    size = os.path.getsize(tmp_path / first)
    limit = size + size // 2  # room for one entry, not two
    other, _ = lenet_and_input(1)
    compile_lenet(other, x, **cache_settings(tmp_path, engine_cache_size=limit))
    assert len(entries(tmp_path)) == 1 and entries(tmp_path) != [first], "the older entry stays"
    compile_lenet(model, x, **cache_settings(tmp_path, engine_cache_size=limit))
    assert stats()["builds"] == 3  # the evicted one was rebuilt


def test_least_recently_used_goes_first(tmp_path):
    a, x = lenet_and_input(0)
    b, _ = lenet_and_input(1)
    compile_lenet(a, x, **cache_settings(tmp_path))
    compile_lenet(b, x, **cache_settings(tmp_path))
    (ea, eb) = sorted(entries(tmp_path), key=lambda p: os.path.getmtime(tmp_path / p))
    os.utime(tmp_path / ea, (1, 1))
    os.utime(tmp_path / eb, (2, 2))
    compile_lenet(a, x, **cache_settings(tmp_path))  # a hit: `a` becomes the most recent
    size = os.path.getsize(tmp_path / ea)
    c, _ = lenet_and_input(2)
    compile_lenet(c, x, **cache_settings(tmp_path, engine_cache_size=2 * size + size // 2))
    assert ea in entries(tmp_path) and eb not in entries(tmp_path)


def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path):
    model, x = lenet_and_input()
    compile_lenet(model, x, **cache_settings(tmp_path))
    (name,) = entries(tmp_path)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="cannot be used .*checksum"):
        gm, r = compile_lenet(model, x, **cache_settings(tmp_path))
    assert [e["cached"] for e in r.engines] == [False] and stats()["rejected"] == 1
    with torch.no_grad():
        assert_close(gm(x), model(x))
    _, r = compile_lenet(model, x, **cache_settings(tmp_path))  # rewritten: a hit again
    assert [e["cached"] for e in r.engines] == [True]


def test_truncated_entry_is_rebuilt(tmp_path):
    model, x = lenet_and_input()
    compile_lenet(model, x, **cache_settings(tmp_path))
    (name,) = entries(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="cannot be used"):
        compile_lenet(model, x, **cache_settings(tmp_path))
    assert stats()["builds"] == 2


def test_store_only_and_reuse_only(tmp_path):
    model, x = lenet_and_input()
    compile_lenet(model, x, device="cpu", cache_built_engines=True, engine_cache_dir=str(tmp_path))
    compile_lenet(model, x, device="cpu", cache_built_engines=True, engine_cache_dir=str(tmp_path))
    assert stats()["builds"] == 2 and stats()["hits"] == 0  # storing does not mean reusing
    _, r = compile_lenet(model, x, device="cpu", reuse_cached_engines=True,
                         engine_cache_dir=str(tmp_path))
    assert [e["cached"] for e in r.engines] == [True]


class DictCache:
    """The documented interface: save(key, blob) and load(key)."""

    def __init__(self):
        self.blobs = {}

    def save(self, key, blob):
        self.blobs[key] = blob

    def load(self, key):
        return self.blobs.get(key)


def test_custom_engine_cache(tmp_path):
    model, x = lenet_and_input()
    cache = DictCache()
    kw = dict(device="cpu", cache_built_engines=True, reuse_cached_engines=True,
              custom_engine_cache=cache)
    compile_lenet(model, x, **kw)
    assert len(cache.blobs) == 1
    (key,) = cache.blobs
    assert len(key) == 64
    gm, r = compile_lenet(model, x, **kw)
    assert [e["cached"] for e in r.engines] == [True] and stats()["builds"] == 1
    cache.blobs[key] = b"garbage"
    with pytest.warns(UserWarning, match="not an Ember engine-cache entry"):
        compile_lenet(model, x, **kw)
    assert stats()["builds"] == 2


def test_torch_compile_path_uses_the_cache(tmp_path):
    model, x = lenet_and_input()
    options = cache_settings(tmp_path)
    for _ in range(2):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="ember", options=options)
        with torch.no_grad():
            assert_close(compiled(x), model(x))
    assert stats()["builds"] == 1 and stats()["hits"] == 1


def test_setting_errors(tmp_path):
    with pytest.raises(ValueError, match="engine_cache_size must be a size in bytes"):
        ember.CompileSettings.from_kwargs(engine_cache_size=-1)
    with pytest.raises(TypeError, match="custom_engine_cache must have save"):
        ember.CompileSettings.from_kwargs(custom_engine_cache=object())
    with pytest.raises(TypeError, match="did you mean 'engine_cache_dir'"):
        ember.CompileSettings.from_kwargs(engine_cach_dir=str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be created"):
        ember.CompileSettings.from_kwargs(cache_built_engines=True,
                                          engine_cache_dir=str(blocker / "sub"))


def test_not_writable_cache_dir(tmp_path, monkeypatch):
    """A folder that exists but refuses files (root ignores mode bits, so the refusal is
    simulated where the cache probes the folder)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ember.engine_cache.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match="engine_cache_dir .* is not writable"):
        ember.CompileSettings.from_kwargs(cache_built_engines=True, engine_cache_dir=str(tmp_path))


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ember.engine_cache.default_cache_dir() == os.path.join(str(tmp_path), "ember", "engines")

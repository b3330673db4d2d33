"""The TorchScript path (ember.ts) and the settings it shares with the other paths: the engine
cache (hits in a fresh process, misses when the engine would differ, names that don't matter,
corrupt entries, a custom cache, entries shared with the dynamo path), the timing cache file,
cuda_graphs recorded in each engine and use_global_partitioner=False. CPU back end, small
models."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn

import ember
from ember import _C

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters"))
from harness import assert_close  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


class TwoBlocks(nn.Module):
    """Two engine segments around data-dependent control flow (which stays TorchScript)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.b = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))

    def forward(self, x):
        y = self.a(x)
        if bool(y.mean() > 0.0):
            y = y * 2.0
        else:
            y = y - 1.0
        return self.b(y)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.mean(dim=(2, 3)))


class BlockRenamed(nn.Module):
    """Block with other attribute, argument and local names: the same engine."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, images):
        hidden_state = torch.relu(self.features(images))
        pooled = hidden_state.mean(dim=(2, 3))
        return self.head(pooled)


def block(seed=0, cls=Block):
    torch.manual_seed(seed)
    m = cls().eval()
    if cls is BlockRenamed:  # the same weights as Block(seed)
        ref = block(seed)
        m.features.load_state_dict(ref.conv.state_dict())
        m.head.load_state_dict(ref.fc.state_dict())
    return m


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def zero_stats():
    ember.engine_cache.reset_stats()


def stats():
    return ember.engine_cache.stats()


def cached(directory, **kw):
    return dict(cache_built_engines=True, reuse_cached_engines=True,
                engine_cache_dir=str(directory), min_block_size=1, **kw)


def ts_compile(model, directory=None, inputs=(X,), **kw):
    settings = cached(directory, **kw) if directory is not None else dict(min_block_size=1, **kw)
    return ember.ts.compile(torch.jit.script(model), inputs=list(inputs), **settings)


def check(compiled, model, x=X):
    with torch.no_grad():
        assert_close(compiled(x), model(x))


@contextlib.contextmanager
def no_ember_warnings():
    """Fails on any warning Ember raises inside the block (a setting reported as unused)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [str(w.message) for w in caught if "ember" in str(w.message)]
    assert not ours, ours


def entries(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".ember-engine"))


def engines(compiled):
    """The torch.classes.ember.Engine attributes (_ember_engine_0, _1, ...)."""
    out = []
    while hasattr(compiled, f"_ember_engine_{len(out)}"):
        out.append(getattr(compiled, f"_ember_engine_{len(out)}"))
    return out


# Compiles the seeded TwoBlocks with the cache in argv[1] and prints the counters.
SCRIPT = textwrap.dedent("""
    import sys, torch, ember
    sys.path.insert(0, {tests!r})
    from test_torchscript_cache import TwoBlocks, X, check
    torch.manual_seed(0)
    model = TwoBlocks().eval()
    compiled = ember.ts.compile(torch.jit.script(model), inputs=[X], min_block_size=1,
                                cache_built_engines=True, reuse_cached_engines=True,
                                engine_cache_dir=sys.argv[1])
    check(compiled, model)
    s = ember.engine_cache.stats()
    cached = [e["cached"] for e in compiled.ember_report.engines]
    print("builds", s["builds"], "hits", s["hits"], "engines", len(cached), "cached", all(cached))
""")


def run_script(directory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=TESTS), str(directory)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_hit_in_a_fresh_process_builds_nothing(tmp_path):
    torch.manual_seed(0)
    model = TwoBlocks().eval()
    compiled = ts_compile(model, tmp_path)
    check(compiled, model)
    assert stats()["builds"] == 2 and stats()["stores"] == 2
    assert [e["cached"] for e in compiled.ember_report.engines] == [False, False]
    assert len(entries(tmp_path)) == 2
    assert run_script(tmp_path) == "builds 0 hits 2 engines 2 cached True"


def test_cache_is_off_by_default():
    compiled = ts_compile(block())
    assert stats()["builds"] == 1 and stats()["hits"] == 0
    assert compiled.ember_report.engines[0]["key"] is None


def test_rescripted_and_renamed_module_hits(tmp_path):
    model = block()
    check(ts_compile(model, tmp_path), model)
    assert stats()["builds"] == 1 and stats()["stores"] == 1
    # Scripted again: a new ScriptModule, same code and weights.
    check(ts_compile(block(), tmp_path), model)
    assert stats()["builds"] == 1 and stats()["hits"] == 1
    # Other attribute, argument and local names (TorchScript value names): the same engine.
    renamed = block(cls=BlockRenamed)
    compiled = ts_compile(renamed, tmp_path)
    check(compiled, renamed)
    assert stats()["builds"] == 1 and stats()["hits"] == 2
    assert compiled.ember_report.engines[0]["cached"]
    assert "1 engine(s) (1 from the engine cache)" in str(compiled.ember_report)
    assert len(entries(tmp_path)) == 1


def test_dynamic_range_hits_and_runs_the_whole_range(tmp_path):
    spec = ember.Input(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 8, 8), max_shape=(4, 3, 8, 8))
    model = block()
    ts_compile(model, tmp_path, inputs=[spec])
    compiled = ts_compile(block(), tmp_path, inputs=[spec])
    assert stats()["builds"] == 1 and stats()["hits"] == 1
    for b in (1, 3, 4):
        check(compiled, model, torch.randn(b, 3, 8, 8))
    # Another argument name (the symbol is x_d0 here, images_d0 there): the same engine.
    renamed = block(cls=BlockRenamed)
    check(ts_compile(renamed, tmp_path, inputs=[spec]), renamed, torch.randn(3, 3, 8, 8))
    assert stats()["builds"] == 1 and stats()["hits"] == 2
    # Another range is another engine.
    other = ember.Input(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 8, 8), max_shape=(8, 3, 8, 8))
    ts_compile(model, tmp_path, inputs=[other])
    assert stats()["builds"] == 2


@pytest.mark.parametrize("change", [dict(optimization_level=1), dict(truncate_double=True),
                                    dict(channels_last=True)])
def test_settings_that_change_the_engine_miss(tmp_path, change):
    model = block()
    ts_compile(model, tmp_path)
    check(ts_compile(model, tmp_path, **change), model)
    assert stats()["builds"] == 2 and stats()["hits"] == 0
    assert len(entries(tmp_path)) == 2


def test_partitioning_settings_alone_do_not_change_the_key(tmp_path):
    model = block()
    ts_compile(model, tmp_path)
    ts_compile(model, tmp_path, torch_executed_ops=["aten::sigmoid"], debug=False)
    assert stats()["builds"] == 1 and stats()["hits"] == 1


def test_other_weights_do_not_hit(tmp_path):
    ts_compile(block(0), tmp_path)
    other = block(1)
    check(ts_compile(other, tmp_path), other)
    assert stats()["builds"] == 2 and stats()["hits"] == 0


def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path):
    model = block()
    ts_compile(model, tmp_path)
    (name,) = entries(tmp_path)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="cannot be used.*checksum mismatch.*rebuilding"):
        compiled = ts_compile(model, tmp_path)
    check(compiled, model)
    assert stats()["rejected"] == 1 and stats()["builds"] == 2
    # Stored again, whole: the next compile hits.
    ts_compile(model, tmp_path)
    assert stats()["hits"] == 1


def test_entry_whose_plan_does_not_fit_is_rebuilt(tmp_path):
    """A custom cache returning another segment's (valid) entry under this key: the checksum
    and description catch it before the plan is used."""
    class Swapping:
        def __init__(self):
            self.blobs = {}

        def save(self, key, blob):
            self.blobs[key] = blob

        def load(self, key):
            others = [b for k, b in self.blobs.items() if k != key]
            return others[0] if others else None

    cache = Swapping()
    model = TwoBlocks().eval()
    kw = dict(cache_built_engines=True, custom_engine_cache=cache, min_block_size=1)
    ember.ts.compile(torch.jit.script(model), inputs=[X], **kw)
    assert len(cache.blobs) == 2
    kw["reuse_cached_engines"] = True
    with pytest.warns(UserWarning, match="description differs"):
        compiled = ember.ts.compile(torch.jit.script(model), inputs=[X], **kw)
    check(compiled, model)
    assert stats()["hits"] == 0 and stats()["rejected"] == 2


def test_custom_cache(tmp_path):
    class DictCache:
        def __init__(self):
            self.blobs, self.loads = {}, 0

        def save(self, key, blob):
            self.blobs[key] = blob

        def load(self, key):
            self.loads += 1
            return self.blobs.get(key)

    cache = DictCache()
    model = TwoBlocks().eval()
    kw = dict(cache_built_engines=True, reuse_cached_engines=True, custom_engine_cache=cache,
              min_block_size=1)
    ember.ts.compile(torch.jit.script(model), inputs=[X], **kw)
    compiled = ember.ts.compile(torch.jit.script(model), inputs=[X], **kw)
    check(compiled, model)
    assert len(cache.blobs) == 2 and cache.loads == 4
    assert stats()["builds"] == 2 and stats()["hits"] == 2
    assert not os.listdir(tmp_path)  # the disk cache is not used


def test_store_only_and_reuse_only(tmp_path):
    model = block()
    ember.ts.compile(torch.jit.script(model), inputs=[X], min_block_size=1,
                     cache_built_engines=True, engine_cache_dir=str(tmp_path))
    assert len(entries(tmp_path)) == 1 and stats()["hits"] == 0
    # reuse only: a hit, nothing stored.
    other = tmp_path / "other"
    ember.ts.compile(torch.jit.script(model), inputs=[X], min_block_size=1,
                     reuse_cached_engines=True, engine_cache_dir=str(tmp_path))
    assert stats()["hits"] == 1 and stats()["builds"] == 1
    ember.ts.compile(torch.jit.script(model), inputs=[X], min_block_size=1,
                     reuse_cached_engines=True, engine_cache_dir=str(other))
    assert stats()["builds"] == 2 and entries(other) == []


@pytest.mark.parametrize("dynamic", [False, True])
def test_dynamo_and_torchscript_paths_share_entries(tmp_path, dynamic):
    """One key recipe on both paths: this segment imports to the same canonical text on both
    (conv2d, relu, mean.dim, linear; the symbol of a dynamic batch named by position although
    torch.export calls it s0 and the TorchScript importer images_d0), so the TorchScript path
    loads the dynamo path's plan and the other way round, and runs it correctly: engine I/O i
    is segment I/O i on both, whatever the plan's tensors are called."""
    model = block(cls=BlockRenamed)
    spec = ember.Input(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 8, 8),
                       max_shape=(4, 3, 8, 8)) if dynamic else X
    dims = ({0: torch.export.Dim("batch", min=1, max=4)},) if dynamic else None
    ep = torch.export.export(model, (X,), dynamic_shapes=dims)
    check(ember.dynamo.compile(ep, [spec], device="cpu", **cached(tmp_path)), model)
    compiled = ts_compile(model, tmp_path, inputs=[spec])
    assert stats()["builds"] == 1 and stats()["hits"] == 1
    assert compiled.ember_report.engines[0]["cached"]
    for b in (1, 3) if dynamic else (2,):
        check(compiled, model, torch.randn(b, 3, 8, 8))
    (entry,) = entries(tmp_path)
    # And back: a fresh TorchScript-path entry serves the dynamo path.
    os.unlink(tmp_path / entry)
    ts_compile(model, tmp_path, inputs=[spec])
    gm = ember.dynamo.compile(ep, [spec], device="cpu", **cached(tmp_path))
    assert stats()["builds"] == 2 and stats()["hits"] == 2
    check(gm, model)


def test_timing_cache_file_written_and_read(tmp_path):
    path = tmp_path / "ts.timing"
    model = block()
    with no_ember_warnings():  # the setting is used: no "not used" warning
        check(ts_compile(model, timing_cache=str(path)), model)
    data = path.read_bytes()
    assert data.startswith(b"EMBRTCAC")
    assert len(_C.TimingCache.from_bytes(data)) == 0  # the CPU back end times nothing
    # Read: choices in the file reach the build and are written back with it.
    seeded = _C.TimingCache()
    seeded.store("sm_90 test-gpu", "gemm m=2 n=4 k=8", b"\x07\x01")
    path.write_bytes(seeded.serialize())
    check(ts_compile(model, timing_cache=path), model)
    back = _C.TimingCache.from_bytes(path.read_bytes())
    assert len(back) == 1 and back.lookup("sm_90 test-gpu", "gemm m=2 n=4 k=8") == b"\x07\x01"
    # A corrupt file is an error naming it.
    path.write_bytes(b"not a timing cache")
    with pytest.raises(ValueError, match="ts.timing.*cannot be loaded"):
        ts_compile(model, timing_cache=path)


@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_graphs_recorded_in_every_engine(tmp_path, graphs):
    model = TwoBlocks().eval()
    with no_ember_warnings():
        compiled = ts_compile(model, cuda_graphs=graphs)
    found = engines(compiled)
    assert len(found) == 2
    for e in found:
        assert json.loads(e.metadata_json())["cuda_graphs"] is graphs
    # Kept through save / load, and on a cache hit.
    path = str(tmp_path / "m.ts")
    torch.jit.save(compiled, path)
    loaded = torch.jit.load(path)
    assert all(json.loads(e.metadata_json())["cuda_graphs"] is graphs for e in engines(loaded))
    check(loaded, model)
    ts_compile(model, tmp_path, cuda_graphs=not graphs)
    hit = ts_compile(model, tmp_path, cuda_graphs=graphs)
    assert stats()["hits"] == 2
    assert all(json.loads(e.metadata_json())["cuda_graphs"] is graphs for e in engines(hit))


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)                # supported
        u = torch.special.i0(x)      # no converter, independent of y
        z = self.b(u)                # supported, not adjacent to the first linear
        return y + z


def test_use_global_partitioner_false_keeps_segments_adjacent():
    torch.manual_seed(0)
    model = TwoBranches().eval()
    x = torch.randn(2, 8)
    with no_ember_warnings():
        merged = ts_compile(model, inputs=[x])
        adjacent = ts_compile(model, inputs=[x], use_global_partitioner=False)
    assert merged.ember_report.num_engines < adjacent.ember_report.num_engines
    check(merged, model, x)
    check(adjacent, model, x)

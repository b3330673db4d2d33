"""torch.compile(backend="ember") on the CPU back end: models against eager, graph breaks,
fallback, gradients, dynamic ranges without recompiles (Dynamo's counters and Ember's build
counter), options validation."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import ember
from converters.harness import assert_close
from ember import _backend
from test_dynamo import LeNet, WithSpecial

CPU = {"device": "cpu"}
#: The small MLP below has 4 compute nodes: below the default min_block_size.
SMALL = {"device": "cpu", "min_block_size": 1}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with no compiled frames and zeroed counters."""
    torch._dynamo.reset()
    counters.clear()
    ember.engine_cache.reset_stats()
    _backend.reset_stats()
    yield
    torch._dynamo.reset()


def dynamo_graphs() -> int:
    """Graphs Dynamo compiled (one per frame compile, recompiles included)."""
    return counters["stats"]["unique_graphs"]


def builds() -> int:
    return ember.engine_cache.stats()["builds"]


def run_compiled(model, *args, options=None, **kwargs):
    compiled = torch.compile(model, backend="ember", options=dict(CPU, **(options or {})))
    with torch.no_grad():
        return compiled, compiled(*args, **kwargs), model(*args, **kwargs)


def test_backend_is_registered():
    from torch._dynamo.backends.registry import list_backends, lookup_backend
    assert "ember" in list_backends()
    assert lookup_backend("ember") is _backend.backend


def test_lenet_matches_eager_in_engines():
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.randn(2, 1, 32, 32)
    compiled, out, ref = run_compiled(model, x, options={"require_full_compilation": True})
    assert_close(out, ref)
    assert _backend.stats()["engine_graphs"] == 1 and builds() == 1
    with torch.no_grad():  # a second call reuses everything
        assert_close(compiled(x), ref)
    assert dynamo_graphs() == 1 and builds() == 1


def test_resnet18_matches_eager():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    _, out, ref = run_compiled(model, x)
    assert_close(out, ref)
    assert builds() >= 1


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, initializer_range=32 ** -0.5)
    return transformers.BertModel(cfg).eval()


def test_bert_kwargs_and_model_output():
    model = _tiny_bert()
    ids = torch.randint(3, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    _, out, ref = run_compiled(model, input_ids=ids, attention_mask=mask)
    assert type(out) is type(ref)  # the HF ModelOutput comes back whole
    assert_close(out.last_hidden_state, ref.last_hidden_state)
    assert_close(out.pooler_output, ref.pooler_output)
    assert builds() >= 1


def test_gpt2_matches_eager():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  use_cache=False, initializer_range=32 ** -0.5)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(3, 128, (2, 10))
    _, out, ref = run_compiled(model, ids, use_cache=False)
    assert_close(out.logits, ref.logits)
    assert builds() >= 1


class Branchy(torch.nn.Module):
    """A print and a data-dependent Python branch: Dynamo breaks the graph at both."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.c = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.relu(self.a(x)) * 2.0 + 1.0
        print("ember test: graph break")
        if y.sum() > 0:
            y = torch.relu(self.b(y)) - 0.5
        else:
            y = torch.tanh(self.c(y))
        return torch.sigmoid(y) * 3.0


def test_graph_breaks_compile_every_subgraph(capsys):
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(4, 8)
    _, out, ref = run_compiled(model, x, options={"min_block_size": 1})
    assert_close(out, ref)
    assert "graph break" in capsys.readouterr().out
    assert _backend.stats()["engine_graphs"] >= 2  # before and after the breaks
    assert builds() >= 2


def test_unconverted_op_runs_in_pytorch_inside_the_graph():
    torch.manual_seed(0)
    model = WithSpecial().eval()
    x = torch.randn(4, 8)
    _, out, ref = run_compiled(model, x, options={"min_block_size": 1})
    assert_close(out, ref)
    assert builds() == 2  # the linear layers on either side of aten::i0


def test_graph_needing_grad_runs_in_pytorch_with_a_warning():
    torch.manual_seed(0)
    model = LeNet()
    x = torch.randn(2, 1, 32, 32)
    compiled = torch.compile(model, backend="ember", options=CPU)
    _backend._grad_warned = False
    with pytest.warns(UserWarning, match="needs gradients"):
        out = compiled(x)
    assert builds() == 0 and _backend.stats()["pytorch_graphs"] == 1
    out.sum().backward()  # real gradients, from PyTorch
    assert model.conv1.weight.grad is not None
    assert_close(out, model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not per graph
        compiled(torch.randn(2, 1, 32, 32))


def test_a_graph_that_fails_to_compile_runs_in_pytorch(monkeypatch):
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.randn(2, 1, 32, 32)

    def broken_export(*args, **kwargs):
        raise RuntimeError("export broke")

    monkeypatch.setattr(_backend.torch.export, "export", broken_export)
    with pytest.warns(UserWarning, match="failed to compile and runs in PyTorch: RuntimeError: "
                                         "export broke"):
        _, out, ref = run_compiled(model, x)
    assert_close(out, ref)
    assert _backend.stats()["pytorch_graphs"] == 1
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ember",
                             options=dict(CPU, pass_through_build_failures=True))
    with pytest.raises(Exception, match="export broke"), torch.no_grad():
        compiled(x)


def test_inference_mode():
    torch.manual_seed(0)
    model = LeNet().eval()
    compiled = torch.compile(model, backend="ember", options=CPU)
    with torch.inference_mode():
        x = torch.randn(2, 1, 32, 32)
        assert_close(compiled(x), model(x))
    assert builds() == 1


def test_changed_weights_are_recompiled():
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.randn(2, 1, 32, 32)
    compiled, out, ref = run_compiled(model, x)
    assert_close(out, ref)
    with torch.no_grad():
        model.fc3.weight.mul_(-1.0)
        assert_close(compiled(x), model(x))
    assert builds() == 2


# ---- dynamic shapes

class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 8)

    def forward(self, x):
        return torch.softmax(self.b(torch.relu(self.a(x))), dim=-1)


def test_mark_dynamic_range_no_recompile_no_rebuild():
    torch.manual_seed(0)
    model = MLP().eval()
    compiled = torch.compile(model, backend="ember", options=SMALL)
    with torch.no_grad():
        for batch in (8, 2, 5, 16, 3):
            x = torch.randn(batch, 16)
            torch._dynamo.mark_dynamic(x, 0, min=2, max=16)
            assert_close(compiled(x), model(x), f"batch {batch}")
        assert dynamo_graphs() == 1, "Dynamo recompiled inside the declared range"
        assert builds() == 1, "Ember rebuilt an engine inside the declared range"
        for batch in (1, 40):  # outside: Dynamo or Ember may compile again, and it must work
            x = torch.randn(batch, 16)
            assert_close(compiled(x), model(x), f"batch {batch}")


def test_ember_compile_torch_compile_ir_batch_and_seq_ranges():
    model = _tiny_bert()
    spec = ember.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(4, 32), dtype=torch.int64)
    compiled = ember.compile(model, ir="torch_compile", inputs=[spec], **CPU)
    with torch.no_grad():
        for batch, seq in ((2, 16), (2, 4), (4, 32), (3, 9), (2, 31)):
            ids = torch.randint(3, 128, (batch, seq))
            out = compiled(ids)
            assert_close(out.last_hidden_state, model(ids).last_hidden_state, f"{batch}x{seq}")
        assert dynamo_graphs() == 1, "Dynamo recompiled inside the declared ranges"
        first = builds()
        assert first >= 1
        for batch, seq in ((4, 4), (3, 32), (2, 5)):
            compiled(torch.randint(3, 128, (batch, seq)))
        assert dynamo_graphs() == 1 and builds() == first
        # Dynamo specializes size 1: one static graph for batch 1, then no more.
        for seq in (4, 20, 32):
            ids = torch.randint(3, 128, (1, seq))
            assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state, f"1x{seq}")
        assert dynamo_graphs() == 2
        ids = torch.randint(3, 128, (6, 40))  # outside both ranges
        assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state, "6x40")


def test_options_inputs_range_applies_once_dynamo_goes_dynamic():
    torch.manual_seed(0)
    model = MLP().eval()
    spec = ember.Input(min_shape=(1, 16), opt_shape=(4, 16), max_shape=(64, 16))
    compiled = torch.compile(model, backend="ember", options=dict(SMALL, inputs=[spec]))
    with torch.no_grad():
        for batch in (4, 7):  # static first graph, then Dynamo's automatic dynamic shapes
            x = torch.randn(batch, 16)
            assert_close(compiled(x), model(x))
        graphs, built = dynamo_graphs(), builds()
        for batch in (9, 33, 64, 2):
            x = torch.randn(batch, 16)
            assert_close(compiled(x), model(x), f"batch {batch}")
        assert dynamo_graphs() == graphs and builds() == built
        x = torch.randn(100, 16)  # beyond the range, inside Dynamo's guard: a shape build
        assert_close(compiled(x), model(x))
        assert _backend.stats()["shape_builds"] == 1


def test_unbounded_dynamic_builds_per_shape():
    torch.manual_seed(0)
    model = MLP().eval()
    compiled = torch.compile(model, backend="ember", options=SMALL, dynamic=True)
    with torch.no_grad():
        for batch in (3, 5, 3):
            x = torch.randn(batch, 16)
            assert_close(compiled(x), model(x))
    assert dynamo_graphs() == 1
    assert builds() == 2 and _backend.stats()["shape_builds"] == 2


# ---- options

def test_unknown_option_names_the_closest():
    with pytest.raises(TypeError, match="did you mean 'min_block_size'"):
        ember.compile(MLP(), ir="torch_compile", min_blok_size=2)
    compiled = torch.compile(MLP().eval(), backend="ember", options={"min_blok_size": 2})
    with pytest.raises(Exception, match="did you mean 'min_block_size'"), torch.no_grad():
        compiled(torch.randn(2, 16))


def test_unwritable_engine_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="engine_cache_dir .* cannot be created"):
        ember.compile(MLP(), ir="torch_compile", cache_built_engines=True,
                      engine_cache_dir=str(blocker / "engines"))


def test_bad_inputs_option():
    with pytest.raises(TypeError, match=r"options\['inputs'\]\[0\] must be an ember.Input"):
        ember.compile(MLP(), ir="torch_compile", inputs=[(2, 16)])


def test_entry_point_works_without_importing_ember(tmp_path):
    """torch.compile(backend="ember") finds the backend through the torch_dynamo_backends
    entry point (a dist-info like the installed package's), before anything imports ember."""
    dist = tmp_path / "ember_entrypoint-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ember-entrypoint\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[torch_dynamo_backends]\nember = ember._backend:backend\n")
    script = textwrap.dedent("""
        import sys, torch
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
        assert "ember" not in sys.modules
        compiled = torch.compile(model, backend="ember",
                                 options={"device": "cpu", "min_block_size": 1})
        assert "ember" in sys.modules  # loaded by torch through the entry point
        x = torch.randn(2, 4)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
        import ember
        print("builds", ember.engine_cache.stats()["builds"])
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "builds 1" in proc.stdout


def test_logging_reports_builds_and_debug_context(caplog):
    torch.manual_seed(0)
    model = MLP().eval()
    with caplog.at_level("INFO", logger="ember"):
        run_compiled(model, torch.randn(2, 16), options=SMALL)
    build_records = [r for r in caplog.records if r.name == "ember.build"]
    assert any("built in" in r.getMessage() for r in build_records)
    assert any(r.name == "ember.torch_compile" for r in caplog.records)
    caplog.clear()
    torch._dynamo.reset()
    with ember.logging.debug():
        assert ember.logging.logger.level == 10
        run_compiled(model, torch.randn(3, 16), options=SMALL)
    assert ember.logging.logger.level == 0
    # The C++ builder's pass log, forwarded at DEBUG.
    assert any(r.name == "ember.build" and r.levelname == "DEBUG" for r in caplog.records)


@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in ember.available_backends(),
                    reason="needs a GPU and the CUDA back end")
def test_cuda_model():
    torch.manual_seed(0)
    model = LeNet().eval().cuda()
    x = torch.randn(2, 1, 32, 32, device="cuda")
    compiled = torch.compile(model, backend="ember")
    with torch.no_grad():
        out = compiled(x)
        assert out.is_cuda
        assert_close(out, model(x))


def test_progress_bar_on_a_tty_at_info(monkeypatch):
    """Builds draw a tqdm bar when stderr is a terminal and "ember" is at INFO; nothing
    otherwise."""
    import io
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    torch.manual_seed(0)
    model, x = LeNet().eval(), torch.randn(2, 1, 32, 32)
    for level, expect_bar in ((20, True), (30, False)):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        old = ember.logging.logger.level
        ember.logging.logger.setLevel(level)
        try:
            ember.compile(model, inputs=[x], device="cpu")
        finally:
            ember.logging.logger.setLevel(old)
            monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        assert ("building engines" in term.getvalue()) == expect_bar, term.getvalue()

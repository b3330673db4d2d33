"""The GPU benchmark's models (bench/models.py), tiny versions, through Ember on the CPU back end
(EMBER_TEST_DEVICE=cuda: on the GPU, as tools/gpu_check.sh's zoo step runs it) in the
benchmark's precisions: every node in one engine (zero fallback nodes, the wide
benchmark's requirement), outputs matching eager PyTorch in the same dtype under the harness's
per-dtype tolerances, and close to eager f32 (cosine). The tiny versions keep each model's
structure (layer kinds, attention variants, position encodings, the benchmark's wrappers) with
fewer, narrower layers, so a model that would fall back on the GPU machine fails here first.

Also checks bench.py's row parsing and the wide suite's composition (CPU-only parts of it)."""

import os
import sys

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "converters"))

import bench  # noqa: E402 (bench/bench.py)
import models  # noqa: E402 (bench/models.py)
from harness import assert_close  # noqa: E402
from zoo.common import DEVICE, cosine, fallback_lines, flat_outputs, to_device  # noqa: E402

import ember  # noqa: E402

#: The wide benchmark's accuracy requirement (issue 18) is cosine >= 0.999 against eager f32 in
#: f16 on the GPU; the CPU back end is held to the same bar in both precisions.
MIN_COSINE = 0.999

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(models.WIDE))
def test_bench_model_compiles_whole(name, dtype):
    model, inputs = to_device(*models.make(name, batch=2, tiny=True))
    with torch.no_grad():
        reference = flat_outputs(model(*inputs))[0]  # eager f32
    model = model.to(DTYPES[dtype])
    inputs = tuple(x.to(DTYPES[dtype]) if x.is_floating_point() else x for x in inputs)
    report = ember.dynamo.CompilationReport()
    compiled = ember.compile(model, inputs=list(inputs), device=DEVICE, report=report)
    assert fallback_lines(report) == [], (
        f"{name} {dtype}: nodes left to PyTorch:\n" + "\n".join(fallback_lines(report)))
    assert len(report.engines) == 1, f"{name} {dtype}: {len(report.engines)} engines"
    with torch.no_grad():
        expected = flat_outputs(model(*inputs))
        actual = flat_outputs(compiled(*inputs))
    assert_close(actual, expected, where=f"{name} {dtype}")
    assert 0.01 < reference.std().item() < 100, (
        f"{name}: eager f32 output std {reference.std().item()} (models.prepare should make "
        "outputs O(1))")
    cos = cosine(actual[0], reference)
    assert cos >= MIN_COSINE, f"{name} {dtype}: cosine {cos} against eager f32"


@pytest.mark.parametrize("name", list(models.WIDE))
def test_bench_model_partitions_whole_as_a_cuda_program(name):
    """The same models exported as CUDA programs (fake tensors: no GPU needed), partitioned with
    dryrun: what depends on the program's device (which nodes count as on another device) is
    checked too. Swin-T passed the CPU test above and had 290 fallback nodes on an H100, from
    its mask fills' 0-dim CPU constants (2026-12-06)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import ember.dynamo

    if "cuda" not in ember._C.available_backends():
        pytest.skip("this Ember build has no CUDA back end")
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cuda"):
        torch.manual_seed(0)
        model, inputs = models.MODELS[name].build(2, True)
        ep = torch.export.export(model.eval(), tuple(inputs))
        ep = ep.run_decompositions(ember.dynamo.decomposition_table())
    # Real host bytes for the weights (the importer reads them); the graph's fake CUDA values
    # still say where every node runs. compile() decomposes again: here that is done.
    params = {spec.target for spec in ep.graph_signature.input_specs
              if spec.kind.name == "PARAMETER"}
    for store in (ep.state_dict, ep.constants):
        for key, value in list(store.items()):
            if isinstance(value, torch.Tensor):
                zeros = torch.zeros(value.shape, dtype=value.dtype)
                store[key] = torch.nn.Parameter(zeros, requires_grad=False) \
                    if key in params else zeros
    ep.run_decompositions = lambda *args, **kwargs: ep
    report = ember.dynamo.CompilationReport()
    specs = [ember.Input(shape=list(x.shape), dtype=x.dtype) for x in inputs]
    ember.dynamo.compile(ep, specs, device="cuda", dryrun=True, report=report)  # no GPU: no index
    assert report.fallback == [], report.fallback


def test_wide_suite_covers_the_issue_list():
    """At least 12 models, each built from a config (no weights downloaded), with the families
    issue 18 asks for."""
    assert len(models.WIDE) >= 12
    for needed in ("vit_b_16", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
                   "deeplabv3_resnet50", "bert", "roberta", "t5_small", "qwen2_0_5b", "gpt2",
                   "resnet50"):
        assert needed in models.WIDE


def test_qwen2_has_the_0_5b_shapes():
    """The full-size decoder has Qwen2.5-0.5B's geometry: GQA with 14 query and 2 key/value
    heads of dim 64 (the tiny one keeps GQA: 4 and 2)."""
    cfg = models.qwen2_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (
                896, 24, 14, 2, 4864, 151936)
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    tiny = models.qwen2_config(tiny=True)
    assert tiny.num_key_value_heads < tiny.num_attention_heads


def test_qwen2_attention_reads_the_key_value_heads_unrepeated():
    """HF's repeat_kv copies (unsqueeze, expand, reshape) before each tiny Qwen2 attention
    disappear in the builder: every Attention layer reads the 2 key/value heads itself (the
    kernels group the 4 query heads over them) and no expand (Select) is left in the engine."""
    import json

    model, inputs = models.make("qwen2_0_5b", 1, tiny=True)
    report = ember.dynamo.CompilationReport()
    compiled = ember.compile(model, inputs=list(inputs), device="cpu", report=report)
    assert fallback_lines(report) == [], "\n".join(fallback_lines(report))
    layers = [layer for attr in sorted(dir(compiled)) if attr.startswith("_ember_engine_")
              for layer in json.loads(getattr(compiled, attr).inspect())["layers"]]
    attention = [layer for layer in layers if layer["type"] == "Attention"]
    assert len(attention) == models.qwen2_config(tiny=True).num_hidden_layers
    assert not [layer["name"] for layer in layers if layer["type"] == "Select"]
    for layer in attention:
        params = layer["params"]
        # RoPE is applied to q and k after their transposes: those two stay head-major, v and
        # the output are read and written seq-major in place (kV | kOut), so their transposes
        # are gone.
        assert not params["seq_major"] and params["seq_major_operands"] == 12, layer
        for kv, seq_major in zip(layer["inputs"][1:3], (False, True)):
            assert kv["shape"].strip("[]").split(", ")[2 if seq_major else 1] == "2", layer
    transposes = [layer["name"] for layer in layers if layer["type"] == "Shuffle"
                  and layer["params"]["first_transpose"] == [0, 2, 1, 3]]
    assert transposes == [], transposes
    # merge_sibling_products: per decoder layer, q and k are one product (the RoPE kernels read
    # their heads of it in place): six products a layer (q+k, v, o, gate, up, down), and no
    # slice copies. (On the CPU the SiLU sits in the gate projection's epilogue, so gate and up
    # differ and stay two; CUDA leaves the SiLU to the fused kernel and merges them too.)
    cfg = models.qwen2_config(tiny=True)
    head = cfg.hidden_size // cfg.num_attention_heads
    widths = [int(layer["outputs"][0]["shape"].strip("[]").split(", ")[-1])
              for layer in layers if layer["type"] == "MatrixMultiply"]
    assert len(widths) == 6 * len(attention), widths
    assert widths.count(cfg.hidden_size + cfg.num_key_value_heads * head) == len(attention)
    assert not [layer["name"] for layer in layers if layer["type"] == "Slice"]
    with torch.no_grad():
        assert_close(flat_outputs(compiled(*inputs)), flat_outputs(model(*inputs)))


def test_make_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.make("nope", 1)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        models.make("bert", 0)


def test_parse_rows():
    assert bench.parse_rows("vit_b_16:32,bert:1:bf16", ["f16", "bf16"]) == [
        ("vit_b_16", 32, "f16"), ("vit_b_16", 32, "bf16"), ("bert", 1, "bf16")]
    assert bench.parse_rows(bench.DEFAULT_ROWS, ["f16"])[0] == ("resnet50", 1, "f16")
    with pytest.raises(SystemExit, match="not model:batch"):
        bench.parse_rows("bert", ["f16"])
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        bench.parse_rows("nope:1", ["f16"])
    with pytest.raises(SystemExit, match="dtype 'f8'"):
        bench.parse_rows("bert:1:f8", ["f16"])


def test_wide_suite_rows():
    rows = bench.parse_rows(bench.suite_rows("wide", None), ["f16", "bf16"])
    assert len(rows) == 4 * len(models.WIDE)
    assert ("deeplabv3_resnet50", 8, "bf16") in rows and ("qwen2_0_5b", 1, "f16") in rows
    part = bench.suite_rows("wide", "t5_small,gpt2")
    assert part == "t5_small:1,t5_small:32,gpt2:1,gpt2:32"
    with pytest.raises(SystemExit, match="unknown nope"):
        bench.suite_rows("wide", "gpt2,nope")


@pytest.mark.parametrize("name", ["t5_small", "qwen2_0_5b"])
def test_rms_norms_are_one_layer_each(name):
    """RMSNorm as T5 and Qwen2 write it (cast to f32, pow, mean over the last dim, add eps,
    rsqrt, two products, cast back) is one Normalization layer of type RMS per norm module
    (the builder's recognize_rms_norms), run on the f16 tensor (absorb_casts): no mean is left as
    a Reduce layer or as a generated kernel's row reduction."""
    import json

    model, inputs = models.make(name, batch=1, tiny=True)
    norms = sum(1 for m in model.modules() if type(m).__name__ in ("T5LayerNorm", "Qwen2RMSNorm"))
    assert norms >= 4
    model = model.half()
    compiled = ember.compile(model, inputs=list(inputs), device="cpu")
    layers = []
    for attr in sorted(n for n in dir(compiled) if n.startswith("_ember_engine_")):
        layers += json.loads(getattr(compiled, attr).inspect())["layers"]
    means = [l["name"] for l in layers if l["type"] == "Reduce" and l["params"]["op"] == 4]
    assert means == [], f"{name}: means left unfused: {means}"
    reducing = [l["name"] for l in layers if l["type"] == "FusedPointwise"
                and 5 in l["params"]["program"][0::6]]  # family 5: a row reduction
    assert reducing == [], reducing
    rms = [l for l in layers if l["type"] == "Normalization" and l["params"]["type"] == 3]
    assert len(rms) == norms, [l["name"] for l in rms]
    assert all(l["outputs"][0]["dtype"] == "f16" for l in rms), [l["outputs"] for l in rms]

"""INT8 and FP8 (issue 17, section 2) on the CPU back end.

- Programs carrying quantized_decomposed Q/DQ nodes (what PT2E's convert_pt2e leaves; built here
  with torch.ops.quantized_decomposed directly, see docs/precision.md for why not torchao) compile
  with zero fallback into Quantize/Dequantize layers, and match PyTorch's own fake-quantized run.
- ember.quantize: each calibration method, FP8, exclusions, the calibration cache, and clear
  errors for bad input.
- The builder's int8/fp8 product fusion gives what the unfused Q/DQ graph gives.
The layer math itself is tested against written-out formulas in
tests/cpp/engine/quantize_test.cpp.
"""

import json
import logging

import pytest
import torch

import ember
from ember.dynamo import CompilationReport

from converters.harness import TOLERANCES, assert_close

qd = torch.ops.quantized_decomposed


@pytest.fixture(autouse=True)
def seeded():
    """The same weights and data whichever tests ran before (rounding ties are data-dependent)."""
    torch.manual_seed(0)


def compile_full(model, inputs, report=None, **settings):
    """Compiled for the CPU back end with every node in engines (zero fallback)."""
    report = report if report is not None else CompilationReport()
    ep = torch.export.export(model.eval() if isinstance(model, torch.nn.Module) else model,
                             tuple(inputs))
    gm = ember.dynamo.compile(ep, list(inputs), device="cpu", min_block_size=1,
                              require_full_compilation=True, report=report, **settings)
    assert not report.fallback, str(report)
    return gm


def step_close(actual, expected, step):
    """Within one quantization step (the tolerance of an int8 rounding that went the other
    way), and mostly exact."""
    diff = (actual.float() - expected.float()).abs()
    assert float(diff.max()) <= step * 1.0001 + 1e-5, f"max diff {float(diff.max())} > step {step}"
    assert float((diff > 1e-4).float().mean()) < 0.02, "more than 2% of elements differ"


def assert_matches_fake_quant(out, reference, f32, int8_steps=True, label=""):
    """The engine against PyTorch's fake-quantized run of the same program, at the tolerance of
    the output's dtype. The engine runs PyTorch's quantization math, but the float layers
    between quantizations sum in another order (int8 products exactly, against PyTorch's sums
    of dequantized values): where an intermediate x / scale lands within an ulp of a rounding
    tie, that value goes one step the other way. So: more than 95% of the elements within the
    dtype's tolerance, none further than two steps of the output's int8 range (`int8_steps`),
    and the quantized model still the model (cosine to the f32 model above 0.98)."""
    atol, rtol = TOLERANCES[out.dtype]
    name = str(out.dtype).replace("torch.float", "f")
    out, reference = out.float(), reference.float()
    close = (out - reference).abs() <= atol + rtol * reference.abs()
    assert float(close.float().mean()) > 0.95, f"{float(close.float().mean()):.3f} within {name}"
    if int8_steps:
        assert float((out - reference).abs().max()) <= 2 * float(reference.abs().max()) / 127
    cos = torch.nn.functional.cosine_similarity(out.flatten(), f32.float().flatten(), dim=0)
    assert cos > 0.98, f"{label}cosine to f32 {float(cos):.4f}"


# ---------------------------------------------------------------------------------------------
# quantized_decomposed programs


class QOnly(torch.nn.Module):
    def __init__(self, op, *args):
        super().__init__()
        self.op, self.args = op, args

    def forward(self, x):
        return self.op(x, *self.args)


@pytest.mark.parametrize("dtype,lo,hi", [(torch.int8, -128, 127), (torch.uint8, 0, 255),
                                         (torch.int8, -127, 127)])
def test_quantize_per_tensor_matches_pytorch_bytes(dtype, lo, hi):
    x = torch.randn(4, 33) * 3
    x[0, :6] = torch.tensor([0.25, 0.75, -0.25, 1000.0, -1000.0, 0.0])  # ties and saturation
    zp = 0 if dtype == torch.int8 else 128
    model = QOnly(qd.quantize_per_tensor.default, 0.5, zp, lo, hi, dtype)
    gm = compile_full(model, [x])
    out = gm(x)
    assert out.dtype == dtype
    assert torch.equal(out, model(x))


def test_quantize_per_channel_and_dequantize_overloads():
    x = torch.randn(2, 5, 3, 4)
    scales = torch.rand(5) * 0.1 + 0.01
    zps = torch.tensor([0, 3, -2, 0, 7])

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scales", scales)
            self.register_buffer("zps", zps)
            self.register_buffer("s", torch.tensor(0.05))
            self.register_buffer("z", torch.tensor(3))

        def forward(self, x):
            q = qd.quantize_per_channel.default(x, self.scales, self.zps, 1, -128, 127, torch.int8)
            a = qd.dequantize_per_channel.default(q, self.scales, self.zps, 1, -128, 127,
                                                  torch.int8)
            q2 = qd.quantize_per_tensor.tensor(x, self.s, self.z, -128, 127, torch.int8)
            b = qd.dequantize_per_tensor.tensor(q2, self.s, self.z, -128, 127, torch.int8)
            return q, a, b

    model = M()
    gm = compile_full(model, [x])
    for got, want in zip(gm(x), model(x)):
        assert got.dtype == want.dtype
        if got.dtype == torch.int8:
            assert (got.int() - want.int()).abs().max() <= 1
            assert torch.equal(got, want)
        else:
            assert_close(got, want)


class PT2ELinear(torch.nn.Module):
    """What convert_pt2e makes of a linear layer with the x86 quantizer's defaults: uint8
    asymmetric activations, int8 per-channel symmetric weights (a constant), f32 bias."""

    def __init__(self, k=32, n=16):
        super().__init__()
        w = torch.randn(n, k) * 0.2
        self.register_buffer("w_scale", w.abs().amax(1) / 127)
        self.register_buffer("w_zp", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("w_q", torch.clamp(torch.round(w / self.w_scale[:, None]), -127, 127)
                             .to(torch.int8))
        self.bias = torch.nn.Parameter(torch.randn(n) * 0.1)

    def forward(self, x):
        q = qd.quantize_per_tensor.default(x, 0.02, 120, 0, 255, torch.uint8)
        xd = qd.dequantize_per_tensor.default(q, 0.02, 120, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel.default(self.w_q, self.w_scale, self.w_zp, 0, -127, 127,
                                              torch.int8)
        return torch.nn.functional.linear(xd, w, self.bias)


def test_pt2e_style_asymmetric_linear_compiles_and_matches():
    model = PT2ELinear()
    x = torch.randn(8, 32)
    gm = compile_full(model, [x])
    # uint8 activations with a zero point fuse into the int8 product (input 6, the zero point).
    layers = [layer for layer in engine_layer_records(gm)
              if layer["type"] == "QuantizedMatrixMultiply"]
    assert len(layers) == 1 and layers[0]["inputs"][0]["dtype"] == "u8", layers
    with torch.no_grad():
        assert_close(gm(x), model(x))


# ---------------------------------------------------------------------------------------------
# ember.quantize on small models


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.nn.functional.max_pool2d(torch.relu(self.conv2(y)), 2)
        return self.fc(y.flatten(1))


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Attention(torch.nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.heads = heads

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (t.reshape(b, l, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        y = (att @ v).transpose(1, 2).reshape(b, l, d)
        return self.out(y)


MODELS = {
    "convnet": (ConvNet, (2, 3, 8, 8)),
    "mlp": (MLP, (8, 32)),
    "attention": (Attention, (2, 8, 32)),
}


def calibration(shape, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def quantized_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and
            str(n.target).startswith(("quantized_decomposed.", "ember."))]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["max", "entropy", "percentile"])
def test_quantize_small_models_compile_with_zero_fallback_and_match(name, method):
    cls, shape = MODELS[name]
    model = cls().eval()
    data = calibration(shape)
    qmodel = ember.quantize(model, data, dtype=torch.int8, method=method)
    assert quantized_nodes(qmodel), "no Q/DQ nodes inserted"
    x = data[0][0]
    with torch.no_grad():
        reference = qmodel(x)          # PyTorch's own fake-quantized run
        f32 = model(x)
    gm = compile_full(qmodel, [x])
    with torch.no_grad():
        out = gm(x)
    assert_matches_fake_quant(out, reference, f32, label=f"{name}/{method}: ")


def test_percentile_and_entropy_clip_outliers_that_max_keeps():
    model = MLP().eval()
    data = calibration((64, 32))
    data[0][0][0, 0] = 400.0  # one outlier
    thresholds = {}
    for method in ("max", "percentile", "entropy"):
        q = ember.quantize(model, data, method=method, percentile=99.9)
        node = next(n for n in q.graph.nodes
                    if n.target == qd.quantize_per_tensor.default and n.args[0].op == "placeholder")
        thresholds[method] = node.args[1] * 127
    assert thresholds["max"] == pytest.approx(400.0, rel=1e-5)
    assert thresholds["percentile"] < 10
    assert thresholds["entropy"] < 50


def test_fp8_quantize_compiles_and_matches():
    model = MLP().eval()
    data = calibration((8, 32))
    qmodel = ember.quantize(model, data, dtype=torch.float8_e4m3fn)
    targets = {str(n.target) for n in quantized_nodes(qmodel)}
    assert targets == {"ember.quantize_fp8.default", "ember.dequantize_fp8.default"}
    x = data[1][0]
    gm = compile_full(qmodel, [x])
    with torch.no_grad():
        assert_close(gm(x), qmodel(x))
        cos = torch.nn.functional.cosine_similarity(gm(x).flatten(), model(x).flatten(), dim=0)
    assert cos > 0.99


def test_excluded_ops_and_nodes_stay_float():
    model = ConvNet().eval()
    data = calibration((2, 3, 8, 8))
    all_q = ember.quantize(model, data)
    no_linear = ember.quantize(model, data, excluded_ops=[torch.ops.aten.linear])
    no_conv1 = ember.quantize(model, data, excluded_nodes=[r"^conv2d$"])

    def quantized_consumers(gm):
        return {u.name for n in gm.graph.nodes
                if str(n.target).startswith("quantized_decomposed.dequant") for u in n.users}

    # The spellings of an op all mean the same op.
    for spelling in ("linear", "aten.linear.default", "aten::linear",
                     torch.ops.aten.linear.default):
        gm = ember.quantize(model, data, excluded_ops=[spelling])
        assert "linear" not in quantized_consumers(gm), spelling

    assert "linear" in quantized_consumers(all_q)
    assert "linear" not in quantized_consumers(no_linear)
    assert "conv2d" in quantized_consumers(all_q) and "conv2d" not in quantized_consumers(no_conv1)
    assert "conv2d_1" in quantized_consumers(no_conv1)


class DepthwiseNet(torch.nn.Module):
    """A pointwise and a depthwise convolution (MobileNet's block in small)."""

    def __init__(self):
        super().__init__()
        self.pw = torch.nn.Conv2d(3, 8, 1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return torch.relu(self.dw(torch.relu(self.pw(x))))


def test_grouped_convolutions_stay_float_unless_included(caplog):
    model = DepthwiseNet().eval()
    data = calibration((2, 3, 8, 8))

    def quantized_consumers(gm):
        return {u.name for n in gm.graph.nodes
                if str(n.target).startswith("quantized_decomposed.dequant") for u in n.users}

    with caplog.at_level(logging.INFO, logger="ember.quantization"):
        default = ember.quantize(model, data)
    assert quantized_consumers(default) == {"conv2d"}, quantized_consumers(default)
    assert "conv2d_1 (aten.conv2d.default, groups = 8) stays in float" in caplog.text, caplog.text
    included = ember.quantize(model, data, include_grouped_convolutions=True)
    assert quantized_consumers(included) == {"conv2d", "conv2d_1"}
    x = data[0][0]
    for qmodel, quantized in ((default, 1), (included, 2)):
        gm = compile_full(qmodel, [x])
        types = [t for t, _ in engine_layers(gm)]
        assert types.count("QuantizedConvolution") == quantized, types
        assert types.count("Convolution") == 2 - quantized, types
        with torch.no_grad():
            assert_matches_fake_quant(gm(x), qmodel(x), model(x))
    with pytest.raises(TypeError, match="include_grouped_convolutions must be True or False"):
        ember.quantize(model, data, include_grouped_convolutions="yes")


def test_calibration_cache_is_written_then_reused(tmp_path, caplog):
    model = MLP().eval()
    data = calibration((8, 32))
    cache = tmp_path / "calib.json"
    first = ember.quantize(model, data, method="entropy", calibration_cache=cache)
    saved = json.loads(cache.read_text())
    assert saved["method"] == "entropy" and saved["thresholds"]
    # Reused: other calibration data would give other thresholds, the cache wins.
    other = [(x * 10,) for (x,) in data]
    again = ember.quantize(model, other, method="entropy", calibration_cache=cache)
    args = lambda gm: [n.args[1:] for n in gm.graph.nodes
                       if n.target == qd.quantize_per_tensor.default]
    assert args(first) == args(again)
    # Another method does not reuse it (and says so).
    with caplog.at_level(logging.WARNING, logger="ember"):
        ember.quantize(model, data, method="max", calibration_cache=cache)
    assert "made for another method" in caplog.text
    assert json.loads(cache.read_text())["method"] == "max"


# ---------------------------------------------------------------------------------------------
# The builder's low-precision fusion


def test_fused_int8_product_equals_unfused_qdq():
    model = MLP().eval()
    data = calibration((8, 32))
    qmodel = ember.quantize(model, data)
    x = data[0][0]
    report0, report3 = CompilationReport(), CompilationReport()
    unfused = compile_full(qmodel, [x], report0, optimization_level=0)
    fused = compile_full(qmodel, [x], report3, optimization_level=3)
    log = "\n".join(line for e in report3.engines for line in e.get("build_log", []))
    with torch.no_grad():
        assert_close(fused(x), unfused(x))
        assert_close(fused(x), qmodel(x))
    assert "fuse_quantized: 2 low-precision products" in log, log
    # fc1's bias, GELU and the Quantize before fc2 all run in fc1's epilogue (int8 out).
    fc1, fc2 = [layer for layer in engine_layer_records(fused)
                if layer["type"] == "QuantizedMatrixMultiply"]
    assert fc1["inputs"][4] is not None and fc1["params"]["fused_activation"], fc1
    assert fc1["params"]["requantize"] and fc1["outputs"][0]["dtype"] == "i8", fc1
    assert fc2["inputs"][4] is not None and not fc2["params"]["requantize"], fc2
    assert "fuse_epilogues:" in log and "1 requantizations" in log, log


def engine_layer_records(gm):
    """The inspector's record of every layer of every engine in a compiled program."""
    layers = []
    for name in dir(gm):
        if name.startswith("_ember_engine_"):
            layers += json.loads(getattr(gm, name).inspect())["layers"]
    return layers


def engine_layers(gm):
    """(type, implementation) of every layer of every engine in a compiled program."""
    return [(layer["type"], layer["implementation"]) for layer in engine_layer_records(gm)]


class SelfAttention(torch.nn.Module):
    """q, k and v projections of one input (weights of different magnitudes), SDPA, output
    projection: BERT's attention in small."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(32, 32)
        self.k = torch.nn.Linear(32, 32)
        self.v = torch.nn.Linear(32, 32)
        self.out = torch.nn.Linear(32, 32)
        with torch.no_grad():
            self.k.weight.mul_(3.0)  # the largest of the three

    def forward(self, x):
        b, n, _ = x.shape
        heads = [p(x).view(b, n, 4, 8).transpose(1, 2) for p in (self.q, self.k, self.v)]
        o = torch.nn.functional.scaled_dot_product_attention(*heads)
        return self.out(o.transpose(1, 2).reshape(b, n, 32))


def test_fp8_projections_of_one_input_share_a_weight_scale_and_merge():
    # FP8 products take one weight scale, so q, k and v get the largest of their three (k's)
    # and the builder merges them into one product; the output projection keeps its own.
    model = SelfAttention().eval()
    data = calibration((2, 6, 32))
    qmodel = ember.quantize(model, data, dtype=torch.float8_e4m3fn)
    scales = {}
    for n in qmodel.graph.nodes:
        if str(n.target) == "ember.dequantize_fp8.default" and n.args[0].op == "get_attr":
            (user,) = n.users
            scales[user.name] = n.args[1]
    assert len(scales) == 4, scales
    k_amax = float(model.k.weight.detach().abs().max())
    for name in ("linear", "linear_1", "linear_2"):
        assert scales[name] == pytest.approx(k_amax / 448.0, rel=1e-6), scales
    out_amax = float(model.out.weight.detach().abs().max())
    assert scales["linear_3"] == pytest.approx(out_amax / 448.0, rel=1e-6), scales
    x = data[1][0]
    gm = compile_full(qmodel, [x])
    types = [t for t, _ in engine_layers(gm)]
    assert types.count("QuantizedMatrixMultiply") == 2, types  # q/k/v merged, and out
    with torch.no_grad():
        assert_close(gm(x), qmodel(x))
        cos = torch.nn.functional.cosine_similarity(gm(x).flatten(), model(x).flatten(), dim=0)
    assert cos > 0.99


def test_int8_convnet_compiles_to_quantized_convolutions():
    model = ConvNet().eval()
    data = calibration((2, 3, 8, 8))
    qmodel = ember.quantize(model, data, dtype=torch.int8)
    x = data[2][0]
    report = CompilationReport()
    gm = compile_full(qmodel, [x], report)
    types = [t for t, _ in engine_layers(gm)]
    # Both convolutions and the linear layer run on int8 operands; no float convolution and no
    # weight dequantization are left.
    assert types.count("QuantizedConvolution") == 2, types
    assert types.count("QuantizedMatrixMultiply") == 1, types
    assert "Convolution" not in types and types.count("Dequantize") == 0, types
    log = "\n".join(line for e in report.engines for line in e["build_log"])
    assert "fuse_quantized: 1 low-precision products (int8/fp8), 2 int8 convolutions" in log, log
    # The epilogues: conv1's relu and the Quantize that feeds conv2 fold into conv1, which then
    # writes int8; conv2 keeps its relu (a max pool sits between it and the next Quantize).
    conv1, conv2 = [layer for layer in engine_layer_records(gm)
                    if layer["type"] == "QuantizedConvolution"]
    assert conv1["params"]["fused_activation"] and conv1["params"]["requantize"], conv1
    assert conv1["outputs"][0]["dtype"] == "i8"
    assert conv2["params"]["fused_activation"] and not conv2["params"]["requantize"], conv2
    assert types.count("Activation") == 0 and types.count("Quantize") == 2, types
    with torch.no_grad():
        out, reference, f32 = gm(x), qmodel(x), model(x)
    assert_matches_fake_quant(out, reference, f32)


def test_a_half_model_quantizes_to_an_int8_engine_with_f16_outputs():
    """A model .half()ed first (what a GPU user has): its dequantizations return f16, so the
    float layers between them (bias, relu, pooling) stay in f16 as in the model, and the engine
    fuses the same int8 products and convolutions as for the f32 model."""
    model = ConvNet().eval().half()
    data = [(x.half(),) for (x,) in calibration((2, 3, 8, 8))]
    qmodel = ember.quantize(model, data, dtype=torch.int8)
    dq = [n for n in quantized_nodes(qmodel) if "dequantize" in str(n.target)]
    assert dq and all(n.kwargs.get("out_dtype") == torch.float16 for n in dq), \
        [(n.name, n.kwargs) for n in dq]
    x = data[2][0]
    report = CompilationReport()
    gm = compile_full(qmodel, [x], report)
    types = [t for t, _ in engine_layers(gm)]
    assert types.count("QuantizedConvolution") == 2 and types.count("QuantizedMatrixMultiply") == 1, \
        types
    with torch.no_grad():
        out, reference, f32 = gm(x), qmodel(x), model.float()(x.float())
    assert out.dtype == torch.float16
    # At f16's tolerance: PyTorch's fake-quantized run sums dequantized f16 values.
    assert_matches_fake_quant(out, reference, f32)


class ConvBNNet(torch.nn.Module):
    """Convolutions with batch norms (eval mode): ember.quantize quantizes the convolution's own
    weights, so each batch norm stays a per-channel scale and shift after it."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)
        for bn in (self.bn1, self.bn2):  # non-trivial statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return self.fc(y.mean((2, 3)))


def test_a_batch_norm_after_an_int8_convolution_folds_into_its_scales():
    model = ConvBNNet().eval()
    data = calibration((2, 3, 8, 8))
    qmodel = ember.quantize(model, data, dtype=torch.int8)
    x = data[1][0]
    report = CompilationReport()
    gm = compile_full(qmodel, [x], report)
    types = [t for t, _ in engine_layers(gm)]
    # Each batch norm's scale and shift went into its convolution's weight scales and bias, and
    # the relu after it into the epilogue: nothing float is left between the convolutions.
    assert types.count("QuantizedConvolution") == 2 and "ElementWise" not in types, types
    assert "Activation" not in types, types
    log = "\n".join(line for e in report.engines for line in e["build_log"])
    assert "fuse_epilogues: 4 scale/shift folds" in log, log
    with torch.no_grad():
        out, reference, f32 = gm(x), qmodel(x), model(x)
    assert_matches_fake_quant(out, reference, f32)


class ResidualNet(torch.nn.Module):
    """A stem and two ResNet basic blocks (conv-bn-relu, conv-bn, + shortcut, relu), the second
    with a 1x1 downsampling shortcut, then a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b2 = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.down = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.bns = torch.nn.ModuleList(torch.nn.BatchNorm2d(c) for c in (8, 8, 16, 16, 16))
        for bn in self.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bns[0](self.a1(x)))
        out = self.bns[1](self.a2(y))
        out += x  # torchvision's spelling: export keeps it as add_
        x = torch.relu(out)
        y = torch.relu(self.bns[2](self.b1(x)))
        x = torch.relu(self.bns[3](self.b2(y)) + self.bns[4](self.down(x)))
        return self.fc(x.mean((2, 3)))


def test_resnet_shortcuts_read_int8_and_blocks_write_int8(caplog):
    """quantize_residuals (the default): the first block's shortcut add reads the block input
    through its fake-quant pair, so the engine's convolution reads the shortcut as int8 (input 7
    i8 with its scale) and writes the block's output as int8 (its Quantize joins it). The
    second block's shortcut is a float convolution output (the downsample's) and stays float.
    With quantize_residuals=False every shortcut is float and a Quantize stays after the first
    block."""
    model = ResidualNet().eval()
    data = calibration((2, 3, 8, 8))
    x = data[1][0]
    with caplog.at_level(logging.INFO, logger="ember.quantization"):
        qmodel = ember.quantize(model, data, dtype=torch.int8)
    assert "1 residual adds read their shortcut quantized" in caplog.text, caplog.text
    adds = [n for n in qmodel.graph.nodes
            if str(n.target) in ("aten.add.Tensor", "aten.add_.Tensor")]
    assert any("dequantize" in str(a.target) for n in adds for a in n.args
               if isinstance(a, torch.fx.Node)), [n.args for n in adds]
    gm = compile_full(qmodel, [x])
    records = engine_layer_records(gm)
    types = [r["type"] for r in records]
    assert types.count("QuantizedConvolution") == 6, types
    assert "ElementWise" not in types and "Activation" not in types, types
    # The input's Quantize and the head's (after the mean): the stem and the first block's end
    # requantize in their epilogues, and nothing dequantizes the shortcut.
    assert types.count("Quantize") == 2, types
    shortcut = [r for r in records if r["type"] == "QuantizedConvolution"
                and len(r["inputs"]) > 7 and r["inputs"][7] is not None]
    assert [r["inputs"][7]["dtype"] for r in shortcut] == ["i8", "f32"], shortcut
    assert "Dequantize" not in types, types
    with torch.no_grad():
        out, reference, f32 = gm(x), qmodel(x), model(x)
    assert_matches_fake_quant(out, reference, f32)

    float_shortcuts = ember.quantize(model, data, dtype=torch.int8, quantize_residuals=False)
    gm_float = compile_full(float_shortcuts, [x])
    types = [t for t, _ in engine_layers(gm_float)]
    assert types.count("Quantize") == 3, types  # and the first block's output, for the next
    with torch.no_grad():
        out, reference = gm_float(x), float_shortcuts(x)
    assert_matches_fake_quant(out, reference, f32)
    with pytest.raises(TypeError, match="quantize_residuals must be True or False"):
        ember.quantize(model, data, quantize_residuals="yes")


def test_fp8_convolutions_fuse_and_match():
    """FP8 E4M3 convolutions (per-tensor scales): one QuantizedConvolution each, summing exact
    E4M3 products in f32, with the batch norm after it folded into its scales."""
    model = ConvBNNet().eval()
    data = calibration((2, 3, 8, 8))
    qmodel = ember.quantize(model, data, dtype=torch.float8_e4m3fn)
    x = data[3][0]
    report = CompilationReport()
    gm = compile_full(qmodel, [x], report)
    types = [t for t, _ in engine_layers(gm)]
    assert types.count("QuantizedConvolution") == 2 and "Convolution" not in types, types
    assert "ElementWise" not in types, types
    log = "\n".join(line for e in report.engines for line in e["build_log"])
    assert "1 low-precision products (int8/fp8), 0 int8 convolutions, 2 fp8 convolutions" in log, log
    with torch.no_grad():
        out, reference, f32 = gm(x), qmodel(x), model(x)
    # The engine sums x_scale * w_scale * sum(qx qw), PyTorch sum((qx x_scale) (qw w_scale)): the
    # same values up to f32 rounding, then the next layer's FP8 rounding (a floating step, so a
    # tie flip moves a value by one E4M3 ulp, 1/8 relative at most, rarely).
    assert_matches_fake_quant(out, reference, f32, int8_steps=False)
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.9999


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_quantized_convolutions_join_a_channels_last_region(dtype):
    """With channels_last on (the GPU's default for f16/bf16 engines; forced here on the CPU),
    the quantized convolutions run NHWC with their int8 or FP8 weights in KRSC order: the same
    sums in the same order, so the same outputs bit for bit."""
    model = ConvBNNet().eval()
    data = calibration((2, 3, 8, 8))
    qmodel = ember.quantize(model, data, dtype=dtype)
    x = data[2][0]
    nchw = compile_full(qmodel, [x], channels_last=False)
    nhwc = compile_full(qmodel, [x], channels_last=True)
    convs = [layer for layer in engine_layer_records(nhwc)
             if layer["type"] == "QuantizedConvolution"]
    assert len(convs) == 2 and all(layer["params"]["channels_last"] for layer in convs), convs
    assert not any(layer["params"]["channels_last"] for layer in engine_layer_records(nchw)
                   if layer["type"] == "QuantizedConvolution")
    with torch.no_grad():
        assert torch.equal(nhwc(x), nchw(x))


class QConvOnly(torch.nn.Module):
    """One convolution in PT2E's decomposed form with symmetric int8 activations: quantize and
    dequantize x per tensor, dequantize an int8 constant weight per output channel (or per
    tensor), f32 bias."""

    def __init__(self, cin=3, cout=8, k=3, groups=1, per_channel=True, stride=1, padding=1,
                 dim=2):
        super().__init__()
        shape = (cout, cin // groups) + (k,) * dim
        w = torch.randn(*shape) * 0.2
        self.per_channel = per_channel
        if per_channel:
            self.register_buffer("w_scale", w.abs().flatten(1).amax(1) / 127)
            self.register_buffer("w_zp", torch.zeros(cout, dtype=torch.int64))
            scale = self.w_scale.reshape((-1,) + (1,) * (dim + 1))
        else:
            self.w_scale = float(w.abs().max() / 127)
            scale = self.w_scale
        self.register_buffer("w_q", torch.clamp(torch.round(w / scale), -127, 127)
                             .to(torch.int8))
        self.bias = torch.nn.Parameter(torch.randn(cout) * 0.1)
        self.groups, self.stride, self.padding, self.dim = groups, stride, padding, dim

    def forward(self, x):
        q = qd.quantize_per_tensor.default(x, 0.02, 0, -128, 127, torch.int8)
        xd = qd.dequantize_per_tensor.default(q, 0.02, 0, -128, 127, torch.int8)
        if self.per_channel:
            w = qd.dequantize_per_channel.default(self.w_q, self.w_scale, self.w_zp, 0, -127,
                                                  127, torch.int8)
        else:
            w = qd.dequantize_per_tensor.default(self.w_q, self.w_scale, 0, -127, 127,
                                                 torch.int8)
        conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d,
                torch.nn.functional.conv3d)[self.dim - 1]
        return conv(xd, w, self.bias, stride=self.stride, padding=self.padding,
                    groups=self.groups)


@pytest.mark.parametrize("case,shape", [
    (dict(), (2, 3, 9, 9)),
    (dict(per_channel=False, stride=2), (2, 3, 9, 9)),
    (dict(cin=8, cout=8, groups=4), (1, 8, 6, 6)),
    (dict(dim=1, padding=0), (2, 3, 20)),
    (dict(cin=2, cout=4, dim=3, k=2, padding=0), (1, 2, 4, 4, 4)),
])
def test_quantized_decomposed_convolution_fuses_and_matches_pytorch(case, shape):
    model = QConvOnly(**case)
    x = torch.randn(*shape)
    gm = compile_full(model, [x])
    types = [t for t, _ in engine_layers(gm)]
    assert "QuantizedConvolution" in types and "Convolution" not in types, types
    # One layer against PyTorch's dequantize-then-convolve: the same quantized inputs, summed
    # exactly here and in f32 there, within the f32 tolerance.
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_a_convolution_with_asymmetric_activations_fuses_and_matches():
    class Asymmetric(QConvOnly):
        def forward(self, x):
            q = qd.quantize_per_tensor.default(x, 0.02, 10, -128, 127, torch.int8)
            xd = qd.dequantize_per_tensor.default(q, 0.02, 10, -128, 127, torch.int8)
            w = qd.dequantize_per_channel.default(self.w_q, self.w_scale, self.w_zp, 0, -127,
                                                  127, torch.int8)
            return torch.nn.functional.conv2d(xd, w, self.bias, padding=1)

    model = Asymmetric()
    x = torch.randn(2, 3, 9, 9)
    gm = compile_full(model, [x])
    types = [t for t, _ in engine_layers(gm)]
    # The zero point goes into the fused layer: it sums (x - zp) * w over the taps inside the
    # input, so the padding stays a real zero as in PyTorch's dequantized convolution.
    assert "QuantizedConvolution" in types and "Convolution" not in types, types
    with torch.no_grad():
        assert_close(gm(x), model(x))


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_have_clear_errors():
    model = MLP().eval()
    data = calibration((8, 32))
    with pytest.raises(ValueError, match="dtype torch.float16 is not supported.*torch.int8"):
        ember.quantize(model, data, dtype=torch.float16)
    with pytest.raises(ValueError, match="calibration_inputs is empty"):
        ember.quantize(model, [])
    with pytest.raises(ValueError, match=r"batch 1 input 0 .* has shape \[8, 31\].*\[8, 32\]"):
        ember.quantize(model, [(torch.randn(8, 32),), (torch.randn(8, 31),)])
    with pytest.raises(ValueError, match="method 'mean' is not one of max, entropy, percentile"):
        ember.quantize(model, data, method="mean")
    with pytest.raises(ValueError, match="percentile must be in"):
        ember.quantize(model, data, method="percentile", percentile=0)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ember.quantize(model, data, excluded_nodes=["("])
    with pytest.raises(TypeError, match="calibration_inputs must be an iterable of batches"):
        ember.quantize(model, torch.randn(8, 32))
    with pytest.raises(ValueError, match="ember.quantize"):
        ember.compile(model, ir="dynamo", inputs=[data[0][0]], enabled_precisions={torch.int8})


def test_fp8_on_a_gpu_without_fp8_is_refused(monkeypatch):
    from ember import quantization
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100")
    with pytest.raises(ValueError, match=r"needs a GPU with FP8.*sm_80.*dtype=torch.int8"):
        quantization.check_fp8_device(torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    quantization.check_fp8_device(torch.device("cuda:0"))  # Hopper: fine

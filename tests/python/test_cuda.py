"""The CUDA back end through the dynamo path (needs a GPU and a build with the CUDA back end;
skipped visibly elsewhere, as on CI). f32 within the model tolerances of test_models.py; f16
models against eager f32 with cosine similarity > 0.999."""

import logging

import pytest
import torch

import ember

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif("cuda" not in ember.available_backends(),
                       reason="this build of Ember has no CUDA back end"),
]

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True)
def exact_f32_reference():
    """Eager f32 convolutions use TF32 by default (cudnn.allow_tf32); the reference must not."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
transformers = pytest.importorskip("transformers")


def cosine(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return (a @ b / (a.norm() * b.norm())).item()


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    res = []
    for o in out:
        res += flat(o) if o is not None else []
    return res


def compile_cuda(model, specs, **settings):
    report = ember.dynamo.CompilationReport()
    gm = ember.compile(model, inputs=specs, device="cuda", report=report,
                       require_full_compilation=True, **settings)
    assert not report.fallback, str(report)
    assert not report.build_failures, str(report)
    assert len(report.engines) == 1, str(report)
    return gm, report


def check_f32(model, inputs, specs=None, extra=()):
    model = model.eval().cuda()
    inputs = [x.cuda() for x in inputs]
    gm, report = compile_cuda(model, specs or inputs)
    for args in (inputs, *[[x.cuda() for x in e] for e in extra]):
        with torch.no_grad():
            expected = flat(model(*args))
            actual = flat(gm(*args))
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert a.device.type == "cuda"
            assert cosine(a, e) > 0.9999
            torch.testing.assert_close(a, e, atol=1e-3, rtol=1e-3)
    return gm


def check_f16(model, inputs, **settings):
    model = model.eval().cuda()
    inputs = [x.cuda() for x in inputs]
    with torch.no_grad():
        expected = flat(model(*inputs))
    half = model.half()
    half_inputs = [x.half() if x.is_floating_point() else x for x in inputs]
    gm, report = compile_cuda(half, half_inputs, **settings)
    with torch.no_grad():
        actual = flat(gm(*half_inputs))
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float16
        assert cosine(a.float(), e) > 0.999
    return report


def channels_last_log(report):
    return [line for e in report.engines for line in e["build_log"]
            if line.startswith("channels_last")]


def small_bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64))


def small_gpt2():
    return transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_f32(name):
    torch.manual_seed(0)
    check_f32(getattr(torchvision.models, name)(weights=None), [torch.randn(2, 3, 64, 64)])


@pytest.mark.parametrize("make", [small_bert, small_gpt2], ids=["bert", "gpt2"])
def test_transformers_f32(make):
    torch.manual_seed(0)
    check_f32(make(), [torch.randint(0, 128, (2, 16))])


@pytest.mark.parametrize("make,example", [
    (lambda: torchvision.models.resnet18(weights=None), lambda: torch.randn(2, 3, 64, 64)),
    (small_bert, lambda: torch.randint(0, 128, (2, 16))),
], ids=["resnet18", "bert"])
def test_f16_against_eager_f32(make, example):
    torch.manual_seed(0)
    check_f16(make(), [example()])


def test_resnet18_channels_last_on_gpu():
    # f16 with the pass on: every convolution and pooling moves to NHWC (one transpose in, the
    # pooled features out by a free reshape); f32 with the pass on runs cuDNN's NHWC f32
    # convolutions, within 1e-3 of eager. (The default moves only f16/bf16: ChannelsLast::kAuto.)
    torch.manual_seed(0)
    report = check_f16(torchvision.models.resnet18(weights=None), [torch.randn(2, 3, 64, 64)],
                       channels_last=True)
    log = channels_last_log(report)
    assert log and log[0].startswith("channels_last: 20 convolutions, 2 poolings"), log
    assert "1 transposes in, 1 out" in log[0], log
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    x = torch.randn(2, 3, 64, 64).cuda()
    gm, report = compile_cuda(model, [x], channels_last=True)
    assert channels_last_log(report)[0].startswith("channels_last: 20 convolutions")
    with torch.no_grad():
        expected = model(x)
        actual = flat(gm(x))[0]
    assert cosine(actual, expected) > 0.9999
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=1e-3)


def test_dynamic_batch_on_gpu():
    torch.manual_seed(0)
    spec = ember.Input(min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 32, 32), max_shape=(8, 3, 32, 32))
    check_f32(torchvision.models.resnet18(weights=None), [torch.randn(4, 3, 32, 32)], [spec],
              extra=[[torch.randn(1, 3, 32, 32)], [torch.randn(8, 3, 32, 32)]])


def test_cpu_tensor_to_a_cuda_engine_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval().cuda()
    gm, _ = compile_cuda(model, [torch.randn(2, 8, device="cuda")])
    with pytest.raises(RuntimeError, match="device"):
        gm(torch.randn(2, 8))


def test_runs_on_the_current_stream_and_on_two_streams():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    gm, _ = compile_cuda(model, [x])
    with torch.no_grad():
        expected = model(x)
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(s1):
            a = gm(x)
        with torch.cuda.stream(s2):
            b = gm(x)
        torch.cuda.synchronize()
    torch.testing.assert_close(a, expected, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b, expected, atol=1e-3, rtol=1e-3)


def test_engine_memory_comes_from_pytorchs_caching_allocator():
    """Engine weights, the activation arena and the library workspace come from PyTorch's caching
    allocator: they count in torch.cuda.memory_allocated() while the engine lives, and go back to
    PyTorch's pool when it is deleted."""
    import gc
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1024)).eval().cuda()
    x = torch.randn(64, 1024, device="cuda")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gm, report = compile_cuda(model, [x])
    gc.collect()  # what earlier tests left behind must not be freed inside the measurement
    torch.cuda.synchronize()
    before_run = torch.cuda.memory_allocated()
    with torch.no_grad():
        y = gm(x)  # the first context: weights, arena, workspace
    torch.cuda.synchronize()
    with_engine = torch.cuda.memory_allocated()
    out_bytes = y.numel() * y.element_size()
    assert with_engine - before_run - out_bytes >= weight_bytes, (
        f"engine memory not from PyTorch's allocator: +{with_engine - before_run - out_bytes} bytes")
    del gm, report
    gc.collect()
    torch.cuda.synchronize()
    released = with_engine - torch.cuda.memory_allocated()
    assert released >= weight_bytes, f"only {released} bytes went back when the engine was deleted"


def test_cuda_graph_replays_follow_new_data_and_can_be_turned_off():
    """From the second call on, a shape replays a CUDA graph: in-place changes of the input and
    new input tensors must both show in the result; cuda_graphs=False gives the same values."""
    torch.manual_seed(0)
    model = small_gpt2().eval().cuda()
    x = torch.randint(0, 128, (2, 16), device="cuda")
    gm = ember.compile(model, inputs=[x], device="cuda")
    eager_off = ember.compile(model, inputs=[x], device="cuda", cuda_graphs=False)
    with torch.no_grad():
        for step in range(4):
            if step == 2:
                x = torch.randint(0, 128, (2, 16), device="cuda")  # a new tensor
            else:
                x.copy_(torch.randint(0, 128, (2, 16), device="cuda"))  # same buffer
            expected = flat(model(x))[0]
            got = flat(gm(x))[0]
            torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(flat(eager_off(x))[0], got, atol=1e-5, rtol=1e-5)


def _full_size(name):
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None), torch.randn(2, 3, 224, 224)
    if name == "bert-base":
        return transformers.BertModel(transformers.BertConfig()), torch.randint(0, 30522, (2, 128))
    return (transformers.GPT2Model(transformers.GPT2Config(use_cache=False)),
            torch.randint(0, 50257, (2, 128)))


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("name", ["resnet50", "bert-base", "gpt2"])
def test_full_size_models(name, dtype):
    """The benchmark's models at full size (random weights): f32 within 1e-3 of eager f32 (no
    TF32), f16 with cosine > 0.999 against eager f32."""
    torch.manual_seed(0)
    model, x = _full_size(name)
    if dtype == "f32":
        check_f32(model, [x])
    else:
        check_f16(model, [x])


def test_transformer_engines_replay_cuda_graphs():
    """An embedding's index check synchronizes, which a capture forbids: it runs on the eager
    first call and is skipped in the capture, so transformer engines do replay graphs."""
    torch.manual_seed(0)
    model = small_bert().eval().cuda()
    x = torch.randint(0, 128, (2, 16), device="cuda")
    gm = ember.compile(model, inputs=[x], device="cuda")
    with torch.no_grad():
        for _ in range(4):
            gm(x)
    torch.cuda.synchronize()
    replays, captures, eager, _staged = gm._ember_engine_0.cuda_graph_stats()
    assert eager == 0 and captures >= 1 and replays >= 2, (replays, captures, eager)


def test_serving_loop_replays_without_recapture(caplog):
    """A serving loop: a new input tensor each call (from a pool of 4) and every output kept.
    After the first call (layer by layer) and one capture, every call replays the staged graph;
    no kept output is overwritten by a later call; no warning about graphs going off."""
    import warnings

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    pool = [torch.randn(2, 3, 64, 64, device="cuda") for _ in range(4)]
    gm = ember.compile(model, inputs=[pool[0]], device="cuda")
    engines = [getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_")]
    kept = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # "CUDA graphs are off" would fail the test
        for i in range(24):
            kept.append(flat(gm(pool[i % 4].clone()))[0])  # clone: a new address every call
        torch.cuda.synchronize()
        for i, out in enumerate(kept):
            torch.testing.assert_close(out, flat(model(pool[i % 4]))[0], atol=1e-3, rtol=1e-3)
    # Degradations (graphs off, a layer on a slower path) go to the "ember" logger.
    slow = [r.getMessage() for r in caplog.records if r.name.startswith("ember")
            and r.levelno >= logging.WARNING]
    assert not slow, slow
    replays, captures, eager, staged = [sum(s) for s in zip(*(e.cuda_graph_stats() for e in engines))]
    assert eager == 0, [e.cuda_graph_disabled_reasons() for e in engines]
    assert captures == len(engines), (replays, captures, staged)
    assert staged == replays == 22 * len(engines), (replays, captures, staged)


def test_engine_is_bound_to_its_device():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval().cuda()
    x = torch.randn(4, 8, device="cuda")
    gm = ember.compile(model, inputs=[x], device="cuda", min_block_size=1)
    engine = next(getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_"))
    with torch.no_grad():
        gm(x)
    assert engine.device_index() == x.device.index
    with pytest.raises(RuntimeError, match=r"is on device cpu but this cuda engine needs device "
                                           r"cuda:\d"):
        torch.ops.ember.execute_engine([x.cpu()], engine)


# ---------------------------------------------------------------- plugins on the GPU
# Custom ops with CUDA kernels run inside CUDA engines as plugins (ember.dynamo.plugin), inside
# CUDA-graph replayed engines when declared capturable (docs/extending.md, "Plugins").

_CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

__global__ void cube_plus_kernel(const float* x, float* y, float b, int64_t n) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] * x[i] * x[i] + b;
}

torch::Tensor cube_plus(torch::Tensor x, double b) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat, "cube_plus: f32 CUDA tensors");
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t n = xc.numel();
  if (n > 0) {
    cube_plus_kernel<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), y.data_ptr<float>(), static_cast<float>(b), n);
  }
  return y;
}

TORCH_LIBRARY(ember_gpu_test, m) { m.def("cube_plus(Tensor x, float b) -> Tensor"); }
TORCH_LIBRARY_IMPL(ember_gpu_test, CUDA, m) { m.impl("cube_plus", &cube_plus); }
"""


@pytest.fixture(scope="module")
def cuda_kernel_op():
    from torch.utils.cpp_extension import load_inline
    load_inline("ember_gpu_test_ext", cpp_sources="", cuda_sources=_CUDA_SOURCE,
                is_python_module=False, verbose=False)
    op = torch.ops.ember_gpu_test.cube_plus.default
    torch.library.register_fake("ember_gpu_test::cube_plus")(lambda x, b: torch.empty_like(x))
    return op


class _UsesPlugin(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc1 = torch.nn.Linear(16, 16)
        self.fc2 = torch.nn.Linear(16, 8)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = self.op(h, 0.5)
        return self.fc2(h)


def _engine(gm):
    return next(getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_"))


def _check_plugin_engine(op, graphs: bool):
    ember.dynamo.plugin(op, cuda_graphs=graphs)
    try:
        torch.manual_seed(0)
        m = _UsesPlugin(op).eval().cuda()
        x = torch.randn(4, 16, device="cuda")
        gm, report = compile_cuda(m, [x])
        kinds = [layer["params"].get("creator") for layer in
                 __import__("json").loads(_engine(gm).inspect())["layers"] if layer["type"] == "Plugin"]
        assert kinds == ["ember::torch_op"], kinds
        # Eager first call; then the staged graph and one zero-copy graph per repeated address
        # set (x and the output alternate between two blocks of the caching allocator, so
        # calls 3 and 4 each capture one); every later call replays.
        for _ in range(8):
            x = torch.randn(4, 16, device="cuda")
            with torch.no_grad():
                torch.testing.assert_close(gm(x), m(x), rtol=1e-4, atol=1e-4)
        replays, captures, _eager, _staged = _engine(gm).cuda_graph_stats()
        if graphs:
            assert captures >= 1 and replays >= 2, (replays, captures)
        else:
            assert replays == 0, "a plugin not declared capturable must keep the engine eager"
            assert "does not support CUDA graphs" in _engine(gm).cuda_graph_disabled_reasons()
        return gm, m
    finally:
        ember.dynamo.remove_plugin(op)


def test_cuda_kernel_custom_op_runs_as_a_plugin_inside_a_replayed_engine(cuda_kernel_op):
    _check_plugin_engine(cuda_kernel_op, graphs=True)


def test_plugin_not_declared_capturable_keeps_the_engine_eager(cuda_kernel_op):
    _check_plugin_engine(cuda_kernel_op, graphs=False)


def test_triton_kernel_custom_op_runs_as_a_plugin_inside_a_replayed_engine():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def _cube_plus_kernel(x_ptr, y_ptr, b, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        tl.store(y_ptr + offs, x * x * x + b, mask=mask)

    @torch.library.triton_op("ember_gpu_test::triton_cube_plus", mutates_args=())
    def triton_cube_plus(x: torch.Tensor, b: float) -> torch.Tensor:
        y = torch.empty_like(x)
        n = x.numel()
        torch.library.wrap_triton(_cube_plus_kernel)[(triton.cdiv(n, 256),)](x, y, b, n, BLOCK=256)
        return y

    _check_plugin_engine(torch.ops.ember_gpu_test.triton_cube_plus.default, graphs=True)


def test_cuda_engine_with_a_plugin_saves_and_loads(cuda_kernel_op, tmp_path):
    ember.dynamo.plugin(cuda_kernel_op, cuda_graphs=True)
    try:
        m = _UsesPlugin(cuda_kernel_op).eval().cuda()
        x = torch.randn(4, 16, device="cuda")
        gm, _ = compile_cuda(m, [x])
        path = str(tmp_path / "plugin.pt2")
        ember.save(gm, path, inputs=[x])
    finally:
        ember.dynamo.remove_plugin(cuda_kernel_op)
    loaded = ember.load(path).module()  # the op is registered in this process
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# INT8 / FP8 (issue 17): ember.quantize'd models on the GPU, against PyTorch's own fake-quantized
# run of the same program and against eager f32. The fused products run as cuBLASLt INT8 / FP8
# GEMMs (the build log says how many were fused).


class _QuantMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(256, 512)
        self.fc2 = torch.nn.Linear(512, 128)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _quantized_on_gpu(dtype):
    torch.manual_seed(0)
    model = _QuantMLP().eval().cuda()
    data = [(torch.randn(64, 256, device="cuda"),) for _ in range(4)]
    qmodel = ember.quantize(model, data, dtype=dtype)
    x = data[0][0]
    gm, report = compile_cuda(qmodel, [x])
    log = [line for e in report.engines for line in e["build_log"]
           if line.startswith("fuse_quantized")]
    with torch.no_grad():
        return gm(x), qmodel(x), model(x), log


def test_int8_quantized_mlp_on_gpu_uses_int8_gemms_and_matches():
    out, fake_quant, f32, log = _quantized_on_gpu(torch.int8)
    assert log and log[0].startswith("fuse_quantized: 2 low-precision products"), log
    # The int8 GEMM sums exactly in int32; PyTorch's fake-quant run sums dequantized f32 values.
    assert cosine(out, fake_quant) > 0.99999
    torch.testing.assert_close(out, fake_quant, atol=1e-3, rtol=1e-3)
    assert cosine(out, f32) > 0.99


class _QuantConvNet(torch.nn.Module):
    """An RGB stem (C = 3: cuDNN's int8 path after channel packing), a 3x3 conv, a depthwise
    conv (groups = 32: the direct int8 kernel) and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.conv = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.conv(y))
        y = torch.relu(self.dw(y))
        return self.fc(y.mean((2, 3)))


def test_int8_quantized_convnet_on_gpu_uses_int8_convolutions_and_matches(caplog):
    import json
    import logging
    torch.manual_seed(0)
    model = _QuantConvNet().eval().cuda()
    data = [(torch.randn(8, 3, 32, 32, device="cuda"),) for _ in range(4)]
    # The depthwise layer is quantized on request only (by default it stays in f32).
    qmodel = ember.quantize(model, data, dtype=torch.int8, include_grouped_convolutions=True)
    x = data[0][0]
    with caplog.at_level(logging.WARNING, logger="ember"):
        gm, report = compile_cuda(qmodel, [x])
    impls = {layer["name"]: layer["implementation"]
             for layer in json.loads(_engine(gm).inspect())["layers"]
             if layer["type"] == "QuantizedConvolution"}
    assert len(impls) == 3, impls
    assert sorted(impls.values()) == ["cuda.QuantizedConvolution", "cuda.QuantizedConvolution",
                                      "cuda.QuantizedConvolution.direct"], impls
    # The depthwise one is reported as a degradation.
    assert "degraded: " in caplog.text and "groups = 32" in caplog.text, caplog.text
    for _ in range(3):  # eager first call, capture, replay
        with torch.no_grad():
            out, fake_quant, f32 = gm(x), qmodel(x), model(x)
        assert cosine(out, fake_quant) > 0.9999
        assert cosine(out, f32) > 0.99


def test_fp8_quantized_mlp_on_gpu_matches():
    if torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(ValueError, match="needs a GPU with FP8"):
            _quantized_on_gpu(torch.float8_e4m3fn)
        return
    out, fake_quant, f32, log = _quantized_on_gpu(torch.float8_e4m3fn)
    assert log and log[0].startswith("fuse_quantized: 2 low-precision products"), log
    assert cosine(out, fake_quant) > 0.9999
    assert cosine(out, f32) > 0.99

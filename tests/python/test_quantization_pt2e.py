"""PT2E quantization from torchao (issue 17, "PyTorch's quantized graphs"): a model quantized
with torchao's prepare_pt2e / convert_pt2e and the X86InductorQuantizer compiles to engines
with zero fallback, the builder fuses its int8 products, and the engine matches PyTorch running
the converted (fake-quantized) program.

torchao's quantizers find conv/linear through the `source_fn_stack` metadata that only a strict
(Dynamo) export records with PyTorch 2.11; a non-strict export leaves the graph unannotated, so
the converted module has no Q/DQ nodes at all. The test exports strictly, as the docs say to.
"""

import collections
import dataclasses

import pytest
import torch

import ember
from ember.dynamo import CompilationReport

from converters.harness import TOLERANCES

xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
                          reason="torchao is installed by tools/setup.sh (requirements-extra)")
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 8 * 8, 32)
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.out(torch.relu(self.fc(x.flatten(1))))


def symmetric_config():
    """The x86 default with int8 symmetric activations instead of uint8 with a zero point (the
    form Ember fuses into int8 products today; TensorRT's INT8 is symmetric too)."""
    config = xiq.get_default_x86_inductor_quantization_config()
    act = dataclasses.replace(config.input_activation, dtype=torch.int8, quant_min=-128,
                              quant_max=127, qscheme=torch.per_tensor_symmetric)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def pt2e_quantize(model, example, calibration, config=None):
    """torchao's documented PT2E flow: strict export, annotate with the x86 quantizer, observe
    the calibration batches, convert to quantized_decomposed Q/DQ."""
    gm = torch.export.export(model, (example,), strict=True).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(config or xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    for batch in calibration:
        prepared(batch)
    return convert_pt2e(prepared)


def ops_of(graph):
    return collections.Counter(str(n.target) for n in graph.nodes if n.op == "call_function")


def compile_and_check(model, converted, x):
    """Zero fallback, and the engine matches PyTorch running the converted program. Returns the
    engines' build log."""
    ep = torch.export.export(converted, (x,))
    report = CompilationReport()
    compiled = ember.dynamo.compile(ep, [x], device="cpu", min_block_size=1,
                                    require_full_compilation=True, report=report)
    assert not report.fallback, str(report)
    with torch.no_grad():
        for batch in (x, torch.randn_like(x)):
            expected, actual = converted(batch), compiled(batch)
            rtol, atol = TOLERANCES[torch.float32]
            # The reference is PyTorch running the same Q/DQ program in f32. The engine's fused
            # int8 products and convolutions sum exactly in int32 where PyTorch sums dequantized
            # values in f32: where an activation lands within an f32 ulp of a rounding tie
            # before the next Quantize (seen: 42.499993 steps), it goes one int8 step the other
            # way, and that step reaches the outputs it feeds. So: most elements within the f32
            # tolerance, none beyond two int8 steps of the output (as test_quantization.py).
            close = (actual - expected).abs() <= atol + rtol * expected.abs()
            assert float(close.float().mean()) > 0.75, float(close.float().mean())
            step = float(expected.abs().max()) / 127
            assert float((actual - expected).abs().max()) <= 2 * step
            # And the quantized model is still the float model, to int8 accuracy.
            cos = torch.nn.functional.cosine_similarity(actual.flatten(), model(batch).flatten(),
                                                        dim=0)
            assert float(cos) > 0.99, float(cos)
    return "\n".join(line for e in report.engines for line in e.get("build_log", []))


@pytest.mark.parametrize("config", ["x86_default", "symmetric"])
def test_torchao_pt2e_int8_program_compiles_and_matches(config):
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(4, 3, 16, 16)
    calibration = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    with torch.no_grad():
        converted = pt2e_quantize(model, x, calibration,
                                  symmetric_config() if config == "symmetric" else None)
    ops = ops_of(torch.export.export(converted, (x,)).graph)
    # The quantizer really quantized: activations per tensor, the 4 weights per channel.
    assert ops["quantized_decomposed.quantize_per_tensor.default"] >= 4, ops
    assert ops["quantized_decomposed.dequantize_per_channel.default"] == 4, ops
    log = compile_and_check(model, converted, x)
    # Both configs fuse: the two linears become int8 products and the two convolutions int8
    # convolutions (the x86 default's uint8 activations with their zero points included).
    assert "fuse_quantized: 2 low-precision products (int8/fp8), 2 int8 convolutions" in log, log


def test_non_strict_export_is_left_unquantized_by_torchao():
    """Why the docs say strict=True: with a non-strict export the x86 quantizer finds nothing
    (no `source_fn_stack`), and the converted program has no Q/DQ nodes. If this starts
    failing, torchao handles non-strict graphs and the docs' advice can go."""
    model = ConvNet().eval()
    x = torch.randn(2, 3, 16, 16)
    gm = torch.export.export(model, (x,)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    prepared(x)
    converted = convert_pt2e(prepared)
    assert not any("quantized_decomposed" in k for k in ops_of(converted.graph)), \
        ops_of(converted.graph)

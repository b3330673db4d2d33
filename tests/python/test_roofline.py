"""The engines' costs in inspect() (src/engine/runtime/cost.h) and bench/roofline.py's use of
them: FLOPs of a compiled MLP's products and attention counted by hand, bytes at least the
tensors' sizes, the roofline time from given peaks."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))

import roofline  # noqa: E402 (bench/roofline.py)

import ember  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, x, q):
        y = self.fc2(torch.relu(self.fc1(x)))
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return y, a


def engines_of(gm):
    return [getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_")]


def test_inspect_reports_flops_and_bytes_and_the_roofline_sums_them():
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    q = torch.randn(2, 4, 16, 8)  # B, H, L, E
    gm = ember.compile(Block().eval(), inputs=[x, q], min_block_size=1)
    texts = [e.inspect() for e in engines_of(gm)]
    assert texts
    infos = [json.loads(t) for t in texts]
    flops = sum(i["flops"] for i in infos)
    # fc1 and fc2 (2 * M * N * K each), and causal attention: scores and values over the
    # 16 * 17 / 2 (query, key) pairs of each of the 8 batch-heads.
    expected = 2 * 8 * 64 * 32 + 2 * 8 * 16 * 64 + 2 * 8 * (16 * 17 // 2) * (8 + 8)
    assert flops == expected, [(layer["type"], layer["flops"]) for i in infos
                               for layer in i["layers"]]
    # Every layer's cost is reported and the engine's is their sum.
    for info in infos:
        assert sum(layer["flops"] for layer in info["layers"]) == info["flops"]
        assert abs(sum(layer["bytes"] for layer in info["layers"]) - info["bytes"]) < 1e-6
    # At least the inputs, the weights and the outputs are moved (f32).
    minimum = 4 * (x.numel() + q.numel() + 32 * 64 + 64 + 64 * 16 + 16 + 8 * 16 + q.numel())
    assert sum(i["bytes"] for i in infos) >= minimum

    peaks = {"tflops": {"f32": 1.0}, "tbps": 1.0}  # 1 TFLOP/s and 1 TB/s: easy to check
    r = roofline.roofline(texts, peaks)
    assert r["flops"] == expected
    # Each layer takes the larger of its two bounds; the sum is at least each total's bound.
    assert r["ms"] >= max(expected / 1e12, r["bytes"] / 1e12) * 1e3 - 1e-12
    assert r["ms"] <= (expected / 1e12 + r["bytes"] / 1e12) * 1e3 + 1e-12
    row = {"ember_ms": 2 * r["ms"]}
    # add_to_row needs a GPU it knows: none here, so it leaves the row alone.
    roofline.add_to_row(row, engines_of(gm), "a CPU")
    assert set(row) == {"ember_ms"}
    roofline.PEAKS["Test GPU"] = peaks
    try:
        roofline.add_to_row(row, engines_of(gm), "NVIDIA Test GPU")
    finally:
        del roofline.PEAKS["Test GPU"]
    assert abs(row["ember_roofline_fraction"] - 0.5) < 1e-9
    assert row["ember_gflop"] == expected / 1e9


def test_a_dynamic_engine_reports_no_cost():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    x = torch.randn(4, 8)
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    gm = ember.compile(ep, inputs=[x], min_block_size=1)
    texts = [e.inspect() for e in engines_of(gm)]
    assert texts and all(json.loads(t)["flops"] is None for t in texts)
    assert roofline.roofline(texts, {"tflops": {"f32": 1.0}, "tbps": 1.0}) is None


def _layer(kind, flops, nbytes, dtype):
    return {"type": kind, "flops": flops, "bytes": nbytes, "inputs": [{"dtype": dtype}]}


def test_each_layer_takes_the_peak_of_its_dtype_and_the_larger_bound():
    peaks = {"tflops": {"f16": 1000.0, "i8": 2000.0}, "tbps": 2.0}
    f16 = _layer("MatrixMultiply", 2e12, 1e9, "f16")   # 2 ms of compute, 0.5 ms of bytes
    i8 = _layer("QuantizedMatrixMultiply", 2e12, 1e9, "i8")  # 1 ms, 0.5 ms
    odd = _layer("MatrixMultiply", 2e12, 0.0, "f8e5m2")  # no peak of its own: the largest
    norm = _layer("Normalization", 0, 4e9, "f16")      # bytes only: 2 ms
    assert abs(roofline.layer_ms(f16, peaks) - 2.0) < 1e-12
    assert abs(roofline.layer_ms(i8, peaks) - 1.0) < 1e-12
    assert abs(roofline.layer_ms(odd, peaks) - 1.0) < 1e-12
    assert abs(roofline.layer_ms(norm, peaks) - 2.0) < 1e-12
    assert roofline.layer_ms({"type": "Shuffle", "flops": None, "bytes": None}, peaks) is None
    engine = {"flops": 6e12, "bytes": 6e9, "layers": [f16, i8, odd, norm]}
    r = roofline.roofline([engine, json.dumps(engine)], peaks)  # a dict and a JSON text
    assert abs(r["ms"] - 12.0) < 1e-9 and r["flops"] == 12e12
    types = roofline.by_type([engine], peaks)
    assert types["MatrixMultiply"][1] == 2 and abs(types["MatrixMultiply"][0] - 3.0) < 1e-9
    # No measured time: the totals but no fraction.
    row = {}
    roofline.PEAKS["Test GPU"] = peaks

    class Engine:
        def inspect(self):
            return json.dumps(engine)

    class Broken:
        def inspect(self):
            raise RuntimeError("no plan")

    try:
        roofline.add_to_row(row, [Engine()], "Test GPU")
        assert "ember_roofline_ms" in row and "ember_roofline_fraction" not in row
        broken = {"ember_ms": 1.0}
        roofline.add_to_row(broken, [Broken()], "Test GPU")  # said in the row, not raised
        assert "RuntimeError" in broken["ember_roofline_error"]
    finally:
        del roofline.PEAKS["Test GPU"]


def test_peaks_are_found_for_the_sxm_parts_only():
    assert roofline.peaks_for("NVIDIA H100 80GB HBM3")["tbps"] == 3.35
    assert roofline.peaks_for("NVIDIA H200")["tbps"] == 4.8
    for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA A100"):
        assert roofline.peaks_for(other) is None, other

"""The roofline of an Ember program: the least time its engines' layers need on a GPU.

Each engine's `inspect()` reports, per layer, the FLOPs of its products and the bytes it must
move (src/engine/runtime/cost.h: each distinct input read once, each output written once). A
layer cannot take less than max(flops / tensor peak of its dtype, bytes / memory bandwidth); the
program's roofline time is the sum of that over its layers, and a row's roofline fraction is that
time over the measured one (1.0 would be every layer at its bound, with no launch gaps).

Peaks are the data-sheet figures of the SXM parts (dense tensor throughput, HBM bandwidth). This
project measured ~768 TFLOP/s for f16 GEMMs on an H100 (issue 18), so a row near 0.8 is at what
the chip gives in practice. f32 products count the CUDA-core peak: Ember keeps f32 as f32 (no
TF32).

The roofline covers Ember's engines only: a row with nodes left to PyTorch has their time in
its measured time, so its fraction reads lower. The counts are the built engine's work
(src/engine/runtime/cost.h), channels the builder padded included.
"""

from __future__ import annotations

import json

# Dense TFLOP/s by the dtype of a product's first input, and TB/s, per GPU (matched by name).
PEAKS = {
    "H200": {"tflops": {"f16": 989.4, "bf16": 989.4, "f32": 66.9, "i8": 1978.9, "u8": 1978.9,
                        "f8e4m3": 1978.9}, "tbps": 4.8},
    "H100": {"tflops": {"f16": 989.4, "bf16": 989.4, "f32": 66.9, "i8": 1978.9, "u8": 1978.9,
                        "f8e4m3": 1978.9}, "tbps": 3.35},
}


# Parts whose names contain a PEAKS key but whose peaks differ (PCIe and NVL boards, the Grace
# Hopper superchip): no roofline for them until they have entries of their own.
OTHER_PARTS = ("PCIe", "NVL", "GH200")


def peaks_for(device_name: str) -> dict | None:
    """The PEAKS entry whose key is in `device_name` ("NVIDIA H100 80GB HBM3", "NVIDIA H200"),
    or None (another GPU, or a PCIe/NVL/GH200 part of these)."""
    if any(part in device_name for part in OTHER_PARTS):
        return None
    for key in sorted(PEAKS, key=len, reverse=True):  # the most specific key first
        if key in device_name:
            return PEAKS[key]
    return None


def layer_ms(layer: dict, peaks: dict) -> float | None:
    """One layer's least time in ms, or None when its cost is unknown (a symbolic shape)."""
    flops, nbytes = layer.get("flops"), layer.get("bytes")
    if flops is None or nbytes is None:
        return None
    t = nbytes / (peaks["tbps"] * 1e12)
    if flops > 0:
        inputs = [i for i in layer.get("inputs", []) if i is not None]
        # A dtype without a peak of its own takes the table's largest (a bound either way).
        peak = peaks["tflops"].get(inputs[0]["dtype"]) if inputs else None
        t = max(t, flops / ((peak or max(peaks["tflops"].values())) * 1e12))
    return t * 1e3


def _info(inspected) -> dict:
    """An engine's inspect() result: the JSON text (the TorchScript engine class) or the dict
    (ember.engine.Engine)."""
    return inspected if isinstance(inspected, dict) else json.loads(inspected)


def roofline(inspect_jsons: list, peaks: dict) -> dict | None:
    """Totals over the engines: flops, bytes and the roofline time in ms (sum of per-layer
    bounds), or None when some layer's cost is unknown."""
    flops = nbytes = ms = 0.0
    for text in inspect_jsons:
        info = _info(text)
        if info.get("flops") is None or info.get("bytes") is None:
            return None
        flops += info["flops"]
        nbytes += info["bytes"]
        for layer in info["layers"]:
            t = layer_ms(layer, peaks)
            if t is None:
                return None
            ms += t
    return {"flops": flops, "bytes": nbytes, "ms": ms}


def by_type(inspect_jsons: list, peaks: dict) -> dict[str, tuple[float, int]]:
    """Least ms and layer count per layer type over the engines (unknown costs left out)."""
    out: dict[str, tuple[float, int]] = {}
    for text in inspect_jsons:
        for layer in _info(text)["layers"]:
            t = layer_ms(layer, peaks)
            if t is None or layer["type"] == "Constant":
                continue
            ms, n = out.get(layer["type"], (0.0, 0))
            out[layer["type"]] = (ms + t, n + 1)
    return out


def add_to_row(row: dict, engines: list, device_name: str, prefix: str = "ember") -> None:
    """Sets row[prefix + "_gflop"], ["_mbytes"], ["_roofline_ms"] and, with a measured
    row[prefix + "_ms"], ["_roofline_fraction"], from the engines' inspect(); nothing when the
    GPU has no PEAKS entry or a cost is unknown."""
    peaks = peaks_for(device_name)
    if peaks is None or not engines:
        return
    try:
        r = roofline([e.inspect() for e in engines], peaks)
    except Exception as e:  # noqa: BLE001 - a roofline never costs the row its timings
        row[f"{prefix}_roofline_error"] = f"{type(e).__name__}: {e}"
        return
    if r is None:
        return
    row[f"{prefix}_gflop"] = r["flops"] / 1e9
    row[f"{prefix}_mbytes"] = r["bytes"] / 1e6
    row[f"{prefix}_roofline_ms"] = r["ms"]
    if row.get(f"{prefix}_ms"):
        row[f"{prefix}_roofline_fraction"] = r["ms"] / row[f"{prefix}_ms"]

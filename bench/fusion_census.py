"""Counts the layers of a model's Ember engines by kind, with the builder's fuse_pointwise pass
on and off, and lists each FusedPointwise layer with the layers it replaced. Runs on the CPU
(the passes are the same for every back end, except channels_last, which moves only
convolutions): what pointwise chains remain after the GEMM/convolution epilogue fusion, and so
how many kernel launches and tensor round trips the generated kernels save on the GPU.

    python bench/fusion_census.py [--models bert,gpt2] [--batch 1] [--dtype f16] [--tiny]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import ember  # noqa: E402
from models import make  # noqa: E402

_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def engine_layers(name: str, batch: int, dtype: torch.dtype, fuse: bool, tiny: bool) -> list[dict]:
    os.environ["EMBER_FUSE_POINTWISE"] = "1" if fuse else "0"
    torch._dynamo.reset()
    model, x = make(name, batch, tiny=tiny)
    model = model.to(dtype)
    xin = [t.to(dtype) if t.is_floating_point() else t for t in x]
    gm = ember.compile(model, inputs=xin, device="cpu")
    layers = []
    for attr in sorted(n for n in dir(gm) if n.startswith("_ember_engine_")):
        layers += json.loads(getattr(gm, attr).inspect())["layers"]
    return layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert,gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="f16", choices=sorted(_DTYPES))
    ap.add_argument("--tiny", action="store_true", help="the CI-size models")
    args = ap.parse_args()
    for name in args.models.split(","):
        off = engine_layers(name, args.batch, _DTYPES[args.dtype], False, args.tiny)
        on = engine_layers(name, args.batch, _DTYPES[args.dtype], True, args.tiny)
        kinds = sorted({layer["type"] for layer in off + on})
        c_off = collections.Counter(layer["type"] for layer in off)
        c_on = collections.Counter(layer["type"] for layer in on)
        print(f"== {name} b{args.batch} {args.dtype}: {len(off)} layers unfused, "
              f"{len(on)} with fuse_pointwise")
        for k in kinds:
            if c_off[k] or c_on[k]:
                print(f"  {k:28s} {c_off[k]:5d} -> {c_on[k]:5d}")
        groups = collections.Counter()
        for layer in on:
            if layer["type"] != "FusedPointwise":
                continue
            steps = len(layer["params"]["program"]) // 6
            shape = layer["outputs"][0]["shape"] if layer["outputs"] else "?"
            groups[(steps, len(layer["inputs"]), len(layer["outputs"]), shape)] += 1
            print(f"  fused: {layer['name']} ({steps} steps, {len(layer['inputs'])} inputs, "
                  f"{len(layer['outputs'])} outputs, {shape})")
        print(f"  {sum(groups.values())} FusedPointwise layers")


if __name__ == "__main__":
    main()

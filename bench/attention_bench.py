"""Ember's Attention layer against PyTorch's SDPA back ends, one shape at a time, on the GPU.

    python bench/attention_bench.py [--shapes 32x12x128x64,1x16x2048x128c,...] [--chain 8]
                                    [--dtype f16|bf16] [--iters 30] [--json out.json]

A shape is BxHxLxD (batch, heads, sequence, head size; keys = queries), with a trailing `c` for
causal. Each row runs a chain of `--chain` attentions (the output is the next call's queries, K
and V fixed), so one timed call is several kernels and the host's share per attention is small;
every variant runs as a CUDA graph replay:
- `ember`: the chain compiled by ember.compile (one engine: `--chain` Attention layers, replayed
  as a CUDA graph by the runtime) with Ember's kernels (the default); `ember_timed` and
  `ember_cudnn` the same with EMBER_CUDNN_ATTENTION=timed (the build times cuDNN's fused SDPA
  against Ember's kernel per problem and keeps the faster) and =force (cuDNN wherever it covers
  the problem);
- `flash`, `efficient`, `cudnn`: torch's scaled_dot_product_attention pinned to one back end
  (torch.nn.attention.sdpa_kernel), captured in a torch.cuda.CUDAGraph.
Reported per attention: microseconds (median of CUDA-event-timed replays / chain), TFLOP/s
(4 B H L S D multiply-adds x 2, halved when causal) and the fraction of the GPU's dense f16/bf16
tensor peak (--peak-tflops, 989 for the H100/H200 SXM), plus the bytes a kernel cannot avoid (Q, K,
V read, O written once) and the time they take at --peak-gbs. The cosine of every variant's
output against the f32 math (torch's math back end in f32) checks that they computed the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import ember
from bench import accuracy, timed_calls_ms  # bench/bench.py (this script's folder is on the path)

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_SHAPES = "1x12x128x64,32x12x128x64,32x12x128x64c,4x12x512x64,4x12x512x64c,2x14x2048x64c,1x16x2048x128c"


class Chain(torch.nn.Module):
    """`n` attentions, each one's output the next one's queries."""

    def __init__(self, n: int, causal: bool):
        super().__init__()
        self.n, self.causal = n, causal

    def forward(self, q, k, v):
        for _ in range(self.n):
            q = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return q


def parse_shape(spec: str) -> tuple[int, int, int, int, bool]:
    causal = spec.endswith("c")
    parts = spec.rstrip("c").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"attention_bench.py: shape '{spec}' is not BxHxLxD[c] (e.g. 32x12x128x64c)")
    b, h, l, d = (int(p) for p in parts)
    return b, h, l, d, causal


def graph_ms(fn, iters: int) -> float:
    """Median CUDA-event ms of one replay of `fn` captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_ms(graph.replay, iters)


def replay_ms(call, iters: int) -> float:
    """bench.py's timing (median CUDA-event ms after warm-up) of a call without arguments."""
    return timed_calls_ms(lambda i: call(), iters, warmup=5)


def run_shape(spec: str, dtype: torch.dtype, chain: int, iters: int, peak_tflops: float,
              peak_gbs: float) -> dict:
    b, h, l, d, causal = parse_shape(spec)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", generator=gen).to(dtype) for _ in range(3))
    model = Chain(chain, causal).eval()
    with torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ref = model(q.float(), k.float(), v.float())
    flops = 4.0 * b * h * l * l * d * (0.5 if causal else 1.0)
    bytes_ = 4.0 * b * h * l * d * q.element_size()
    row = {"shape": spec, "dtype": str(dtype).replace("torch.", ""), "chain": chain,
           "gpu": torch.cuda.get_device_name(), "gflop": flops / 1e9, "mbytes": bytes_ / 1e6,
           "bytes_us": bytes_ / (peak_gbs * 1e3)}

    def record(name: str, ms: float, out: torch.Tensor) -> None:
        us = ms * 1e3 / chain
        row[f"{name}_us"] = us
        row[f"{name}_tflops"] = flops / (us * 1e6)
        row[f"{name}_peak_fraction"] = flops / (us * 1e6) / peak_tflops
        row[f"{name}_cos"] = accuracy(out, ref)[0]

    # EMBER_CUDNN_ATTENTION is read by the back end on every call: each Ember variant keeps its
    # setting while it is built and timed.
    for name, setting in (("ember", "off"), ("ember_timed", "timed"), ("ember_cudnn", "force")):
        old = os.environ.get("EMBER_CUDNN_ATTENTION")
        os.environ["EMBER_CUDNN_ATTENTION"] = setting
        try:
            gm = ember.compile(model, inputs=[q, k, v], device="cuda", min_block_size=1)
            with torch.no_grad():
                out = gm(q, k, v)
                record(name, replay_ms(lambda: gm(q, k, v), iters), out)
        except Exception as e:  # noqa: BLE001 - a row records what failed; the others still run
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"
        finally:
            if old is None:
                os.environ.pop("EMBER_CUDNN_ATTENTION", None)
            else:
                os.environ["EMBER_CUDNN_ATTENTION"] = old
    backends = {"flash": torch.nn.attention.SDPBackend.FLASH_ATTENTION,
                "efficient": torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION}
    for name, backend in backends.items():
        try:
            with torch.no_grad(), torch.nn.attention.sdpa_kernel(backend):
                out = model(q, k, v)
                record(name, graph_ms(lambda: model(q, k, v), iters), out)
        except Exception as e:  # noqa: BLE001
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES)
    p.add_argument("--dtype", default="f16", choices=sorted(DTYPES))
    p.add_argument("--chain", type=int, default=8)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--peak-gbs", type=float, default=3350.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("attention_bench.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.chain < 1:
        raise SystemExit("attention_bench.py: --chain must be at least 1")
    specs = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in specs:
        parse_shape(s)  # every shape checked before the first one runs
    rows = []
    names = ("ember", "ember_timed", "ember_cudnn", "flash", "efficient", "cudnn")
    print(f"{'shape':>16} {'GFLOP':>7} " + " ".join(f"{n + ' us':>12}" for n in names) +
          "  ember TFLOP/s (peak %)  bytes-bound us")
    for spec in specs:
        row = run_shape(spec, DTYPES[args.dtype], args.chain, args.iters, args.peak_tflops,
                        args.peak_gbs)
        rows.append(row)
        cells = " ".join(f"{row[n + '_us']:>12.2f}" if n + "_us" in row else f"{'error':>12}"
                         for n in names)
        eff = (f"{row['ember_tflops']:>8.1f} ({100 * row['ember_peak_fraction']:.0f}%)"
               if "ember_us" in row else "")
        print(f"{spec:>16} {row['gflop']:>7.2f} {cells}  {eff:>22}  {row['bytes_us']:>8.2f}",
              flush=True)
        for n in names:
            if n + "_error" in row:
                print(f"    {n}: {row[n + '_error']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

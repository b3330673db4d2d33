"""Where an Ember engine spends its GPU time: the kernels of one compiled model under
torch.profiler (CUPTI sees every kernel in the process, Ember's and the libraries'), grouped by
name, with their share of the total.

    python bench/kernel_profile.py --model resnet50 --batch 32 [--dtype bf16] [--top 15]
                                   [--channels-last on] [--quantize int8|fp8]

--sequence N prints the last call's first N kernels in launch order with their durations and the
idle gap before each (the time between two graph nodes that neither runs), and the call's total
gap: where the wall time beyond the kernels' own goes (0 prints none; -1 all).

--quantize runs the model through ember.quantize first (the dtype model, calibrated on 4 random
batches), as bench/variants.py's int8/fp8 variants do; the engine's layer implementations and
CUDA-graph counters are printed too, so a layer that left the fast path shows.

--compiler reduce-overhead profiles torch.compile(mode="reduce-overhead") on the same model and
inputs instead of Ember (the baseline's kernels beside Ember's: which GEMMs it picks, what it
fuses); the engine lines are then not printed.

For Ember it also prints the roofline (bench/roofline.py): the FLOPs of the engines' products,
the bytes their layers move, the least time those need on this GPU against the GPU time
measured, and that least time by layer type (to set beside the kernel families).

Models are bench.py's (bench/models.py): any of the wide suite's.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

import ember
from bench import DTYPES, channels_last_settings, make
import roofline  # bench/roofline.py (this script's folder is on the path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=list(DTYPES), default="f16")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="Ember's channels_last setting, as in bench.py")
    p.add_argument("--quantize", choices=["int8", "fp8"], default=None)
    p.add_argument("--sequence", type=int, default=0,
                   help="print the last call's first N kernels in order with the gaps (-1: all)")
    p.add_argument("--compiler", choices=["ember", "reduce-overhead"], default="ember",
                   help="profile Ember's engine or torch.compile(mode='reduce-overhead')")
    args = p.parse_args()
    settings = channels_last_settings(args.channels_last)
    torch.manual_seed(0)
    model, xs = make(args.model, args.batch)
    dtype = DTYPES[args.dtype]
    model = model.to(dtype)
    xs = [x.to(dtype) if x.is_floating_point() else x for x in xs]
    if args.quantize:
        calib = [tuple(torch.randn_like(x) if x.is_floating_point()
                       else torch.randint_like(x, int(x.max()) + 1) for x in xs)
                 for _ in range(4)]
        model = ember.quantize(model, calib, dtype=torch.int8 if args.quantize == "int8"
                               else torch.float8_e4m3fn)
    if args.compiler == "ember":
        gm = ember.compile(model, inputs=xs, device="cuda", **settings)
    else:
        gm = torch.compile(model, mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(5):
            gm(*xs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                gm(*xs)
            torch.cuda.synchronize()
    engines = ([getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine")]
               if args.compiler == "ember" else [])
    for eng in engines:
        impls = collections.Counter(f"{layer['type']}: {layer.get('implementation')}"
                                    for layer in json.loads(eng.inspect())["layers"])
        print("engine layers:", dict(impls))
        if hasattr(eng, "cuda_graph_stats"):
            print("cuda graphs:", eng.cuda_graph_stats())
    totals: dict[str, tuple[float, int]] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name[:90]
        t, n = totals.get(name, (0.0, 0))
        totals[name] = (t + e.device_time_total, n + 1)
    total = sum(t for t, _ in totals.values())
    print(f"{args.model} batch {args.batch} {args.dtype} ({args.compiler}): {total / args.iters / 1e3:.3f} ms of GPU time per "
          f"call in {sum(n for _, n in totals.values()) // args.iters} kernels")
    peaks = roofline.peaks_for(torch.cuda.get_device_name())
    if engines and peaks is not None:
        # The least time the engines' layers need on this GPU (bench/roofline.py); a cost that
        # cannot be read is said, and the kernel table still printed.
        try:
            texts = [e.inspect() for e in engines]
            r = roofline.roofline(texts, peaks)
            if r is not None:
                print(f"roofline: {r['flops'] / 1e9:.1f} GFLOP in products, "
                      f"{r['bytes'] / 1e6:.0f} MB moved, at least {r['ms']:.3f} ms on this GPU; "
                      f"roofline fraction of the GPU time: "
                      f"{r['ms'] / (total / args.iters / 1e3):.2f}")
                print("least ms by layer type:", {k: (round(ms, 4), n) for k, (ms, n) in sorted(
                    roofline.by_type(texts, peaks).items(), key=lambda kv: -kv[1][0])})
        except Exception as e:  # noqa: BLE001
            print(f"roofline: not computed ({type(e).__name__}: {e})")
    print("| share | ms/call | calls/call | kernel |\n| --- | --- | --- | --- |")
    for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"| {100 * t / total:.1f}% | {t / args.iters / 1e3:.3f} | {n // args.iters} | `{name}` |")
    api = collections.Counter(e.name for e in prof.events()
                              if e.device_type != torch.autograd.DeviceType.CUDA
                              and e.name.startswith("cu"))
    # Host-side CUDA API calls per call: a synchronize or a kernel launch here means the call
    # left its CUDA graph (a replay is one cudaGraphLaunch).
    print("host CUDA API calls per call:",
          {n: round(c / args.iters, 1) for n, c in api.most_common(8)})
    if args.sequence:
        print_sequence(prof, args.iters, args.sequence)


def print_sequence(prof, iters: int, limit: int) -> None:
    """The last call's kernels in start order: duration and the idle gap before each."""
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    last = kernels[-(len(kernels) // iters):]
    gaps = [b.time_range.start - a.time_range.end for a, b in zip(last, last[1:])]
    span = last[-1].time_range.end - last[0].time_range.start
    busy = sum(e.time_range.end - e.time_range.start for e in last)
    print(f"last call: {len(last)} kernels, {span / 1e3:.3f} ms from the first start to the last "
          f"end, {busy / 1e3:.3f} ms busy, {sum(g for g in gaps if g > 0) / 1e3:.3f} ms idle "
          f"between kernels")
    print("| # | start us | us | gap before us | kernel |\n| --- | --- | --- | --- | --- |")
    t0 = last[0].time_range.start
    shown = last if limit < 0 else last[:limit]
    for i, e in enumerate(shown):
        gap = e.time_range.start - last[i - 1].time_range.end if i else 0.0
        print(f"| {i} | {e.time_range.start - t0:.1f} | {e.time_range.end - e.time_range.start:.1f} "
              f"| {gap:.1f} | `{e.name[:70]}` |")


if __name__ == "__main__":
    main()

"""Ember against itself: one model compiled several ways, timed in one process on the GPU.

    python bench/variants.py --rows resnet50:1,bert:32 [--variants half,graphs_off,...]
                             [--iters 50] [--json out.json]

Variants (each compiled from the same random weights, inputs and f32 reference):
- `half`: the model `.half()`ed by hand (what bench.py times);
- `graphs_off`: the same with `cuda_graphs=False`, so every call runs layer by layer; its
  `host_us` is the host time of one call when calls are enqueued back to back (no
  synchronization between them): when it exceeds the GPU time, the call is host-bound;
- `graphs_off_legacy_conv`: `graphs_off` with EMBER_CUDNN_CONV=legacy while it is built and
  timed, so convolutions take cuDNN's legacy API instead of its graph API (the A/B of the
  CUDA back end's graph-API convolutions, in one process);
- `half_unfused`: `half` with EMBER_FUSE_POINTWISE=0 while it is built, so chains of pointwise
  layers stay separate kernels instead of one generated (NVRTC) kernel each (the A/B of the
  builder's fuse_pointwise pass);
- `half_no_row_reductions` / `half_row_reductions`: `half` with EMBER_FUSE_ROW_REDUCTIONS=0
  or 1 while it is built, so the pointwise layers still fuse but Reduce layers (RMSNorm's
  mean) stay out of the groups, or join them (the A/B of the row-reduction fusion: T5 and
  Qwen2 rows; the CUDA back end leaves them out by default);
- `half_no_views`: `half` with EMBER_ATTENTION_VIEWS=0 while it is built, so simplify_attention
  leaves the transposes, slices and reshapes around an attention that only strided views would
  remove (the A/B of rewrite 5: torch.nn.MultiheadAttention, the ViT row);
- `half_own_attention` / `half_cudnn_attention`: `half` with EMBER_CUDNN_ATTENTION=off or
  force while it is built and timed: Ember's attention kernels only, or every attention cuDNN
  covers runs there without timing (the default, `half`, times cuDNN's fused SDPA against
  Ember's kernel per problem and keeps the faster; `half_cudnn_timed` sets that explicitly);
- `half_serial_reductions`: `half` with EMBER_PARALLEL_REDUCTIONS=0 (a Reduce with few long
  rows and a global average pooling on one block per row or plane, as before session 30; the
  default splits them over many blocks: T5-small b32's whole-tensor `isinf().any()` guards,
  every squeeze-and-excitation pool);
- `half_written_rms`: `half` with EMBER_RECOGNIZE_RMS_NORMS=0 while it is built, so RMSNorm as
  T5 and Qwen2 write it stays a mean (a Reduce layer) and pointwise kernels instead of one
  Normalization layer each (the A/B of the recognize_rms_norms pass);
- `half_unpadded_channels`: `half` with EMBER_PAD_CONV_CHANNELS=0 while it is built, so a
  convolution reading a 3-channel image keeps C = 3 (cuDNN's indexed kernel) instead of reading
  it zero-padded to 8 channels (the A/B of the pad_conv_channels pass);
- `half_no_space_to_depth`: `half` with EMBER_SPACE_TO_DEPTH=0, so a stride-2 image stem reads
  8 padded channels instead of 2x2 blocks of 16 as a stride-1 layer (the A/B of the pass's
  space-to-depth form);
- `half_unmerged`: `half` with EMBER_MERGE_SIBLING_PRODUCTS=0 (products that read one input
  stay separate GEMMs: SwiGLU's gate and up projections as two, before session 42);
- `half_lt32`: `half` with EMBER_LT_CANDIDATES=32 (cuBLASLt's tactic timing tries 32 of its
  heuristic's candidates instead of 8: whether the fastest algorithm sits further down);
- `half_lt_wide`: `half` with EMBER_LT_SEARCH=wide (tactic timing adds every cuBLASLt algorithm
  id's configurations and their cluster/swizzle/split-K variants, and times the fastest again
  over more launches);
- `half_depthwise_timed` / `half_own_depthwise` / `half_cudnn_depthwise`: `half` with
  EMBER_DEPTHWISE_CONV=timed, force or off: Ember's direct depthwise channels_last kernel timed
  against cuDNN per problem (the faster kept), always, or never (the default today);
- `half_generic_broadcasts`: `half` with EMBER_POINTWISE_STRIDED_VECTORS=0 (generated pointwise
  kernels walk row and plane broadcasts element by element, as before session 31; the default
  reads them four elements at a time);
- `half_no_lone_broadcasts`: `half` with EMBER_FUSE_LONE_BROADCASTS=0 (a lone pointwise layer
  that broadcasts, such as a squeeze-and-excitation multiply, stays an ElementWise layer; the
  default makes it a generated kernel);
- `autocast_f16` / `autocast_bf16`: the f32 model with `enable_autocast=True` (issue 17's
  "within 5% of the hand-.half() model, cosine at least as good");
- `attn_eager` / `attn_sdpa` (Hugging Face rows): the model built with
  `attn_implementation="eager"` (attention written out, which Ember's recognize_attention pass
  rewrites into one Attention layer) or `"sdpa"` (issue 16's attention-rewrite figure);
- `int8` / `fp8`: the `.half()` model through `ember.quantize` (dtype int8 or float8_e4m3fn,
  method "max", calibrated on 4 random batches of the row's input shape): convolutions, linear
  layers and matmuls on int8 / FP8 operands, the rest in f16 (issue 17). Its cosine is against
  the f32 model, like the others.
- `int8_igemm`: `int8` with EMBER_QCONV=igemm and EMBER_QMATMUL=igemm (the NHWC convolutions
  and the products it covers run in Ember's INT8 implicit-GEMM kernel, epilogue included,
  instead of cuDNN's graph or cuBLASLt's GEMM and the epilogue pass);
- `int8_plain_norms` / `fp8_plain_norms`: `int8` / `fp8` with EMBER_QUANTIZE_NORM_OUTPUTS=0
  while built, so each layer norm before a quantized product keeps a Quantize pass of its own
  instead of writing the quantized tensor itself (the A/B of the quantize_norm_outputs pass).
Each variant's row also carries its roofline (bench/roofline.py: `<variant>_gflop`,
`_mbytes`, `_roofline_ms`, `_roofline_fraction`), so an INT8 or FP8 engine is measured
against its own peaks. Eager PyTorch f16 is timed in the same process for scale. Set EMBER_LAYER_PROFILE=1 to have the
CUDA back end print, at exit, the host time per layer kind of the layer-by-layer calls.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import ember
from bench import accuracy, first_tensor, make, median_ms
import roofline  # bench/roofline.py (this script's folder is on the path)

VARIANTS = ("half", "half_unfused", "half_no_row_reductions", "half_row_reductions",
            "half_no_views", "half_own_attention", "half_cudnn_timed", "half_cudnn_attention",
            "half_serial_reductions", "half_lt32", "half_lt_wide", "half_cudnn_depthwise", "half_own_depthwise",
            "half_depthwise_timed", "half_generic_broadcasts", "half_no_lone_broadcasts",
            "graphs_off", "graphs_off_legacy_conv", "autocast_f16", "autocast_bf16", "attn_eager", "attn_sdpa",
            "int8", "fp8", "int8_igemm", "int8_plain_norms", "fp8_plain_norms", "half_written_rms",
            "half_unpadded_channels", "half_no_space_to_depth", "half_unmerged")


def make_hf(name: str, batch: int, attn: str):
    """bert/gpt2 with the given attention implementation (random weights, as bench.make)."""
    import transformers
    if name == "bert":
        cfg = transformers.BertConfig()
        vocab = 30522
    elif name == "gpt2":
        cfg = transformers.GPT2Config(use_cache=False)
        vocab = 50257
    else:
        raise ValueError(f"attn_* variants need a Hugging Face row (bert, gpt2), not '{name}'")
    model = transformers.AutoModel.from_config(cfg, attn_implementation=attn)
    return model.eval().cuda(), (torch.randint(0, vocab, (batch, 128)).cuda(),)


def host_us(fn, xs: tuple, calls: int = 50) -> float:
    """Host microseconds per call when `calls` calls are enqueued back to back."""
    with torch.no_grad():
        fn(*xs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn(*xs)
        host = time.perf_counter() - start
        torch.cuda.synchronize()
    return host / calls * 1e6


def run_variant(row: dict, variant: str, name: str, batch: int, iters: int) -> None:
    # The back end reads EMBER_CUDNN_CONV when a layer's state is prepared (its first call), the
    # builder EMBER_FUSE_POINTWISE when it builds, so each stays set for its variant's build and
    # timing, and is restored afterwards.
    switches = {"graphs_off_legacy_conv": ("EMBER_CUDNN_CONV", "legacy"),
                "half_unfused": ("EMBER_FUSE_POINTWISE", "0"),
                "half_no_row_reductions": ("EMBER_FUSE_ROW_REDUCTIONS", "0"),
                "half_row_reductions": ("EMBER_FUSE_ROW_REDUCTIONS", "1"),
                "half_no_views": ("EMBER_ATTENTION_VIEWS", "0"),
                "half_own_attention": ("EMBER_CUDNN_ATTENTION", "off"),
                "half_serial_reductions": ("EMBER_PARALLEL_REDUCTIONS", "0"),
                "half_cudnn_depthwise": ("EMBER_DEPTHWISE_CONV", "off"),
                "half_own_depthwise": ("EMBER_DEPTHWISE_CONV", "force"),
                "half_depthwise_timed": ("EMBER_DEPTHWISE_CONV", "timed"),
                "half_generic_broadcasts": ("EMBER_POINTWISE_STRIDED_VECTORS", "0"),
                "half_no_lone_broadcasts": ("EMBER_FUSE_LONE_BROADCASTS", "0"),
                "half_cudnn_timed": ("EMBER_CUDNN_ATTENTION", "timed"),
                "half_cudnn_attention": ("EMBER_CUDNN_ATTENTION", "force"),
                "half_lt32": ("EMBER_LT_CANDIDATES", "32"),
                "half_lt_wide": ("EMBER_LT_SEARCH", "wide"),
                "half_written_rms": ("EMBER_RECOGNIZE_RMS_NORMS", "0"),
                "half_unpadded_channels": ("EMBER_PAD_CONV_CHANNELS", "0"),
                "half_no_space_to_depth": ("EMBER_SPACE_TO_DEPTH", "0"),
                "half_unmerged": ("EMBER_MERGE_SIBLING_PRODUCTS", "0"),
                "int8_plain_norms": ("EMBER_QUANTIZE_NORM_OUTPUTS", "0"),
                "int8_igemm": (("EMBER_QCONV", "igemm"), ("EMBER_QMATMUL", "igemm")),
                "fp8_plain_norms": ("EMBER_QUANTIZE_NORM_OUTPUTS", "0")}
    # A variant may set several variables: a tuple of (name, value) pairs.
    setting = switches.get(variant, ())
    pairs = setting if setting and isinstance(setting[0], tuple) else ((setting,) if setting else ())
    old = {env: os.environ.get(env) for env, _ in pairs}
    for env, value in pairs:
        os.environ[env] = value
    try:
        _run_variant(row, variant, name, batch, iters)
    finally:
        for env, value in old.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


def _run_variant(row: dict, variant: str, name: str, batch: int, iters: int) -> None:
    torch.manual_seed(0)
    if variant.startswith("attn_"):
        model, xs = make_hf(name, batch, variant[len("attn_"):])
    else:
        model, xs = make(name, batch)
    with torch.no_grad():
        ref = first_tensor(model(*xs)).float()
    settings: dict = {}
    if variant.startswith("autocast_"):
        settings = dict(enable_autocast=True, autocast_low_precision_type=(
            torch.float16 if variant.endswith("f16") else torch.bfloat16))
        xin = xs
    else:
        model = model.half()
        xin = tuple(x.half() if x.is_floating_point() else x for x in xs)
    if variant in ("graphs_off", "graphs_off_legacy_conv"):
        settings["cuda_graphs"] = False
    quantized = variant.split("_")[0] if variant.startswith(("int8", "fp8")) else None
    if quantized:
        start = time.perf_counter()
        calib = [tuple(torch.randn_like(x) if x.is_floating_point()
                       else torch.randint_like(x, int(x.max()) + 1) for x in xin)
                 for _ in range(4)]
        model = ember.quantize(model, calib, dtype=torch.int8 if quantized == "int8"
                               else torch.float8_e4m3fn)
        row[f"{variant}_calibrate_s"] = time.perf_counter() - start
    report = ember.dynamo.CompilationReport()
    start = time.perf_counter()
    gm = ember.compile(model, inputs=list(xin), device="cuda", report=report, **settings)
    row[f"{variant}_build_s"] = time.perf_counter() - start
    row[f"{variant}_engines"] = len(report.engines)
    row[f"{variant}_fallback_nodes"] = len(report.fallback)
    if quantized:
        row[f"{variant}_fused"] = [line for e in report.engines for line in e["build_log"]
                                   if line.startswith("fuse_quantized")]
    row[f"{variant}_ms"] = median_ms(gm, xin, iters)
    # The variant's least time on this GPU (bench/roofline.py): INT8 and FP8 engines against
    # their own peaks.
    roofline.add_to_row(row, [getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_")],
                        torch.cuda.get_device_name(), prefix=variant)
    row[f"{variant}_host_us"] = host_us(gm, xin)
    with torch.no_grad():
        row[f"{variant}_cos"], row[f"{variant}_maxerr"] = accuracy(
            first_tensor(gm(*xin)).float(), ref)
    if variant in ("half", "graphs_off") or variant.startswith("attn_"):
        with torch.no_grad():
            row[f"eager_{variant}_ms"] = median_ms(model, xin, iters)
    del gm


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="resnet50:1,resnet50:32,bert:1,bert:32,gpt2:1,gpt2:32")
    p.add_argument("--variants", default="half,graphs_off,autocast_f16,autocast_bf16")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    for spec in args.rows.split(","):
        name, batch = spec.split(":")
        row = {"model": name, "batch": int(batch), "gpu": torch.cuda.get_device_name()}
        for v in variants:
            if v.startswith("attn_") and name not in ("bert", "gpt2"):
                continue
            try:
                run_variant(row, v, name, int(batch), args.iters)
            except Exception as e:  # noqa: BLE001 - a failing variant is reported, others run
                row[f"{v}_error"] = f"{type(e).__name__}: {e}"
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    print("| model | batch | variant | Ember ms | host us/call | eager f16 ms | build s | "
          "engines | fallback | cosine vs f32 | roofline ms | roofline fraction |")
    print("|" + " --- |" * 12)
    for r in rows:
        for v in variants:
            if f"{v}_ms" not in r:
                if f"{v}_error" in r:
                    print(f"| {r['model']} | {r['batch']} | {v} | error: {r[f'{v}_error'][:80]} |")
                continue
            eager = r.get(f"eager_{v}_ms")
            print(f"| {r['model']} | {r['batch']} | {v} | {r[f'{v}_ms']:.3f} | "
                  f"{r[f'{v}_host_us']:.0f} | {'-' if eager is None else f'{eager:.3f}'} | "
                  f"{r[f'{v}_build_s']:.1f} | {r[f'{v}_engines']} | {r[f'{v}_fallback_nodes']} | "
                  f"{r[f'{v}_cos']:.6f} | {r.get(f'{v}_roofline_ms', float('nan')):.3f} | "
                  f"{r.get(f'{v}_roofline_fraction', float('nan')):.2f} |")


if __name__ == "__main__":
    main()

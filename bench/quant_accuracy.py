"""The accuracy side of INT8 / FP8 quantization (issue 17): one model of the benchmark through
`ember.quantize`, its end-to-end error against the f32 model, and `ember.debug.compare`'s
per-layer report of the engine against the quantized program.

    python bench/quant_accuracy.py --model resnet50 --batch 2 [--dtype int8|fp8]
                                   [--device cpu|cuda] [--method max] [--json out.json]
                                   [--float-shortcuts] [--program-only]

--float-shortcuts quantizes with quantize_residuals=False (ResNet's shortcuts stay float; by
default they are read through their quantize/dequantize pair). --program-only skips the engine
and the per-layer report: the quantized program (PyTorch's fake-quantized run) against f32
only, which is quick on a CPU.

Runs on the CPU too (the CPU back end runs the same Quantize/Dequantize layers and int32 sums
as its reference), so the report needs no GPU; FP8 there is the CPU reference's FP8 math. The
model is calibrated on 4 random batches of the row's input shape and evaluated on a fifth, as
bench/variants.py's int8/fp8 variants are; the weights are random (bench/models.py), so the
figures say how faithfully the engine runs the quantized program and how much the quantization
itself moves a random-weight model, not a task accuracy.
"""

from __future__ import annotations

import argparse
import json

import torch

import ember
import models as bench_models


def random_like(x: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        return torch.randn_like(x)
    return torch.randint_like(x, int(x.max()) + 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", choices=sorted(bench_models.MODELS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", choices=["int8", "fp8"], default="int8")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--method", choices=["max", "entropy", "percentile"], default="max")
    p.add_argument("--worst", type=int, default=8)
    p.add_argument("--first", type=int, default=12)
    p.add_argument("--json", default=None)
    p.add_argument("--float-shortcuts", action="store_true",
                   help="ember.quantize(..., quantize_residuals=False)")
    p.add_argument("--program-only", action="store_true",
                   help="only the fake-quantized program against f32 (no engine, no report)")
    args = p.parse_args()
    torch.manual_seed(0)
    with torch.device(args.device):
        model, xs = bench_models.make(args.model, args.batch)
    model = model.eval()
    calib = [tuple(random_like(x) for x in xs) for _ in range(4)]
    qdtype = torch.int8 if args.dtype == "int8" else torch.float8_e4m3fn
    qmodel = ember.quantize(model, calib, dtype=qdtype, method=args.method,
                            quantize_residuals=not args.float_shortcuts)

    def first(out):
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return getattr(out, "last_hidden_state", out)

    with torch.no_grad():
        ref = first(model(*xs)).float()
        fake = first(qmodel(*xs)).float()

    def errors(y):
        cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0)
        rel = (y - ref).norm() / ref.norm().clamp_min(1e-30)
        return float(cos), float(rel)

    row = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "device": args.device,
           "method": args.method, "quantize_residuals": not args.float_shortcuts}
    row["fake_quant_cos"], row["fake_quant_rel"] = errors(fake)
    if args.program_only:
        print(f"{args.model} b{args.batch} {args.dtype} ({args.method}, quantize_residuals="
              f"{row['quantize_residuals']}): PyTorch's fake-quantized run vs f32 cosine "
              f"{row['fake_quant_cos']:.6f}, rel {row['fake_quant_rel']:.4f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(row, fh, indent=1)
        return
    report = ember.debug.compare(qmodel, {"device": args.device}, list(xs))
    gm = ember.compile(qmodel, inputs=list(xs), device=args.device)
    with torch.no_grad():
        out = first(gm(*xs)).float()
    row["engine_cos"], row["engine_rel"] = errors(out)
    worst = sorted(report.layers, key=lambda e: -e.rel_error)[: args.worst]
    row["worst_layers"] = [{"node": e.node, "op": e.op, "module": e.module, "dtype": e.dtype,
                            "rel_error": e.rel_error, "cosine": e.cosine} for e in worst]
    row["first_jump"] = report.first_jump.node if report.first_jump else None
    print(f"{args.model} b{args.batch} {args.dtype} ({args.method}) on {args.device}: engine vs "
          f"f32 cosine {row['engine_cos']:.6f}, rel {row['engine_rel']:.4f}; PyTorch's fake-"
          f"quantized run vs f32 cosine {row['fake_quant_cos']:.6f}, rel "
          f"{row['fake_quant_rel']:.4f}")
    print(f"the {args.worst} layers furthest from PyTorch's run of the quantized program:")
    for e in worst:
        print(f"  {e.node:<32} {e.op:<36} {e.module:<28} {e.dtype:<5} rel {e.rel_error:.2e} "
              f"cos {e.cosine:.6f}")
    print("first jump:", row["first_jump"])
    print(f"the first {args.first} layers:")
    print(report.table(limit=args.first))
    row["first_layers"] = [{"node": e.node, "op": e.op, "rel_error": e.rel_error}
                           for e in report.layers[: args.first]]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=1)


if __name__ == "__main__":
    main()

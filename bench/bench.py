"""Ember against eager PyTorch and torch.compile on the GPU (run on the device machine).

    python bench/bench.py [--rows resnet50:1,resnet50:32,bert:1:bf16,...] [--dtypes f16,bf16]
                          [--suite wide [--models vit_b_16,t5_small,...]] [--iters 50]
                          [--compile-modes default,reduce-overhead] [--json out.json]
                          [--isolate] [--ember-torch-compile] [--engine-cache DIR]

Each row (`model:batch[:dtype]`): a model with random weights (bench/models.py: built from
configs, no downloads) in f16 or bf16 on one GPU; for every mode the median latency of
`--iters` CUDA-event-timed calls after warm-up, the build/compile time, Ember's engine and
fallback-node counts, and the accuracy of the low-precision result against eager f32 (cosine
similarity, max abs error). A row without a dtype runs once per `--dtypes` entry. `--suite wide`
is the wide benchmark: every model of bench/models.py (vision transformers, depthwise/SE and
modern convnets, segmentation, encoder-only, encoder-decoder, decoders with and without
grouped-query attention) at batch 1 and its serving batch; `--models` narrows it (to split a
run over several calls). A row that fails (export, build, run) is reported as a row with an
"error" field and the others still run; with `--isolate` each row runs in its own process, so
a CUDA error or a hang (`--row-timeout`) cannot take later rows with it. Prints markdown tables,
among them each row's roofline: the FLOPs of its products, the bytes its layers move and the
least time they need on this GPU, against Ember's time (bench/roofline.py; `ember_gflop`,
`ember_mbytes`, `ember_roofline_ms`, `ember_roofline_fraction`).

Two loop patterns are timed for eager, every torch.compile mode and Ember:
- benchmark: one input tensor reused, every output dropped (what most benchmarks do);
- serving (`*_serving_ms`): a new input tensor each call, taken in turn from a pool of
  `--pool` tensors (as `x = batch.cuda()` gives), and every output kept by the caller (the last
  `--keep` outputs are held, so the allocator cannot hand their memory back). torch.compile's
  reduce-overhead outputs are cloned before they are kept, since its next replay overwrites them.

`--ember-torch-compile` also times torch.compile(backend="ember"), the JIT path (its build time
is the first call's; `ember_tc_*` fields). With `--engine-cache DIR` Ember stores and reuses
engines there: run the same command twice, each in a fresh process, and compare the Ember build
times (`ember_cache_hits` in the second run says which engines came from the cache).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import ember

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as bench_models  # noqa: E402 (bench/models.py, beside this file)
import roofline  # noqa: E402 (bench/roofline.py)

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_ROWS = "resnet50:1,resnet50:32,bert:1,bert:32,gpt2:1,gpt2:32"


def make(name: str, batch: int):
    """(model, inputs) on the GPU in f32: built there directly (random init on the GPU is much
    faster than on the CPU for the 0.5B decoder)."""
    with torch.device("cuda"):
        return bench_models.make(name, batch)


def parse_rows(rows: str, dtypes: list[str]) -> list[tuple[str, int, str]]:
    """"model:batch[:dtype],..." -> [(model, batch, dtype)]; a row without a dtype once per
    entry of `dtypes`. Errors name the bad entry."""
    out = []
    for spec in (r.strip() for r in rows.split(",")):
        if not spec:
            continue
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise SystemExit(f"bench.py: row '{spec}' is not model:batch[:dtype] "
                             "(e.g. vit_b_16:32 or vit_b_16:32:bf16)")
        if parts[0] not in bench_models.MODELS:
            raise SystemExit(f"bench.py: row '{spec}': unknown model '{parts[0]}' (known: "
                             f"{', '.join(bench_models.MODELS)})")
        for dt in ([parts[2]] if len(parts) == 3 else dtypes):
            if dt not in DTYPES:
                raise SystemExit(f"bench.py: row '{spec}': dtype '{dt}' is not one of "
                                 f"{', '.join(DTYPES)}")
            out.append((parts[0], int(parts[1]), dt))
    return out


def suite_rows(suite: str, models: str | None) -> str:
    """The rows of a preset: "wide" is every model at batch 1 and its serving batch."""
    if suite != "wide":
        raise SystemExit(f"bench.py: unknown suite '{suite}' (known: wide)")
    names = list(bench_models.WIDE)
    if models:
        wanted = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in bench_models.MODELS]
        if unknown:
            raise SystemExit(f"bench.py: --models: unknown {', '.join(unknown)} (known: "
                             f"{', '.join(bench_models.MODELS)})")
        names = [m for m in names if m in wanted]
    return ",".join(f"{m}:{b}" for m in names for b in (1, bench_models.MODELS[m].serving_batch))


def channels_last_settings(choice: str) -> dict:
    """Ember's compile settings for a --channels-last choice (auto: the builder's own)."""
    return {} if choice == "auto" else {"channels_last": choice == "on"}


def first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    elif isinstance(out, dict):
        out = tuple(out.values())
    return first_tensor(out[0])


def timed_calls_ms(call, iters: int, warmup: int = 10) -> float:
    """Median CUDA-event ms of `call(i)` over `iters` calls after `warmup` calls."""
    with torch.no_grad():
        for i in range(warmup):
            call(i)
        torch.cuda.synchronize()
        times = []
        for i in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(warmup + i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def median_ms(fn, xs: tuple, iters: int, warmup: int = 10) -> float:
    """The benchmark pattern: the same input tensors reused, every output dropped."""
    return timed_calls_ms(lambda i: fn(*xs), iters, warmup)


def serving_ms(fn, pool: list, iters: int, keep: int, clone: bool = False,
               warmup: int = 10) -> float:
    """Median CUDA-event ms of one call in a serving loop: inputs in turn from `pool`, each
    output kept (the last `keep`), cloned first when `clone` (reduce-overhead reuses its output
    memory)."""
    kept: list = []

    def call(i):
        out = first_tensor(fn(*pool[i % len(pool)]))
        kept.append(out.clone() if clone else out)
        if len(kept) > keep:
            kept.pop(0)

    return timed_calls_ms(call, iters, warmup)


def input_pool(xs: tuple, size: int) -> list[tuple]:
    """`size` distinct input tuples like `xs` (other data, other addresses)."""
    gen = torch.Generator(device=xs[0].device).manual_seed(1)

    def like(x):
        if x.is_floating_point():
            return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        lo, hi = int(x.min().item()), int(x.max().item()) + 1
        return torch.randint(lo, hi, x.shape, generator=gen, device=x.device, dtype=x.dtype)

    return [tuple(like(x) for x in xs) for _ in range(size)]


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    a, b = out.flatten().double(), ref.flatten().double()
    cos = (a @ b / (a.norm() * b.norm())).item()
    return cos, (a - b).abs().max().item()


def run_row(name: str, batch: int, iters: int, modes: list[str], ember_settings: dict,
            pool_size: int = 4, keep: int = 8, torch_compile_backend: bool = False,
            dtype: str = "f16") -> dict:
    row = {"model": name, "batch": batch, "dtype": dtype, "gpu": torch.cuda.get_device_name()}
    try:
        return _run_row(row, name, batch, iters, modes, ember_settings, pool_size, keep,
                        torch_compile_backend, DTYPES[dtype])
    finally:
        # Free this row's models, engines and CUDA graphs before the next row is built. After a
        # CUDA error this can fail too: say so, and let the row's own error be the one reported.
        try:
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            print(f"row {name}:{batch}:{dtype}: freeing its memory failed: "
                  f"{type(e).__name__}: {e}", flush=True)


def _run_row(row: dict, name: str, batch: int, iters: int, modes: list[str],
             ember_settings: dict, pool_size: int, keep: int, torch_compile_backend: bool,
             dtype: torch.dtype) -> dict:
    model, x = make(name, batch)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    # An exact f32 reference (eager convolutions default to TF32).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = first_tensor(model(*x)).float()
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    model = model.to(dtype)
    xin = tuple(t.to(dtype) if t.is_floating_point() else t for t in x)
    pool = input_pool(xin, pool_size)
    with torch.no_grad():
        row["eager_ms"] = median_ms(model, xin, iters)
        row["eager_serving_ms"] = serving_ms(model, pool, iters, keep)
        row["eager_cos"], row["eager_maxerr"] = accuracy(first_tensor(model(*xin)), ref)
    for mode in modes:
        key = "compile" if mode == "default" else mode.replace("-", "_")
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
        with torch.no_grad():
            compiled(*xin)
            torch.cuda.synchronize()
        row[f"{key}_build_s"] = time.perf_counter() - start
        row[f"{key}_ms"] = median_ms(compiled, xin, iters)
        row[f"{key}_serving_ms"] = serving_ms(compiled, pool, iters, keep,
                                              clone=mode == "reduce-overhead")
        del compiled
    torch._dynamo.reset()
    report = ember.dynamo.CompilationReport()
    start = time.perf_counter()
    gm = ember.compile(model, inputs=list(xin), device="cuda", report=report, **ember_settings)
    row["ember_build_s"] = time.perf_counter() - start
    row["ember_cache_hits"] = sum(bool(e["cached"]) for e in report.engines)
    row["ember_engines"] = len(report.engines)
    row["ember_fallback_nodes"] = len(report.fallback)
    if report.fallback:  # which nodes ran in PyTorch, and why (the wide benchmark wants none)
        row["ember_fallback"] = sorted({f"{op}: {why}" for _, op, why in report.fallback})
    row["ember_ms"] = median_ms(gm, xin, iters)
    engines = [getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_")]

    def graph_stats(prefix: str):
        # [replays, captures, contexts running layer by layer, staged replays] over the engines:
        # whether the timed calls replayed CUDA graphs, and through the staging buffers.
        stats = [e.cuda_graph_stats() for e in engines]
        row[f"{prefix}_graph_replays"] = sum(s[0] for s in stats)
        row[f"{prefix}_graph_captures"] = sum(s[1] for s in stats)
        row[f"{prefix}_eager_contexts"] = sum(s[2] for s in stats)
        row[f"{prefix}_staged_replays"] = sum(s[3] for s in stats)
        reasons = {r for e in engines for r in e.cuda_graph_disabled_reasons().splitlines()}
        if reasons:
            row[f"{prefix}_graphs_off"] = sorted(reasons)

    graph_stats("ember")
    # FLOPs, bytes and the least time the engines' layers need on this GPU (bench/roofline.py).
    roofline.add_to_row(row, engines, torch.cuda.get_device_name())
    row["ember_serving_ms"] = serving_ms(gm, pool, iters, keep)
    graph_stats("ember_after_serving")
    with torch.no_grad():
        row["ember_cos"], row["ember_maxerr"] = accuracy(first_tensor(gm(*xin)).float(), ref)
    if torch_compile_backend:
        ember_torch_compile(row, model, xin, ref, iters, ember_settings)
    compiled_ms = [row[k] for k in ("compile_ms", "reduce_overhead_ms") if k in row]
    if compiled_ms:
        row["ember_vs_best_compile"] = row["ember_ms"] / min(compiled_ms)
    row["ember_vs_eager"] = row["ember_ms"] / row["eager_ms"]
    if "reduce_overhead_serving_ms" in row:
        row["ember_serving_vs_reduce_overhead"] = (row["ember_serving_ms"] /
                                                   row["reduce_overhead_serving_ms"])
    return row


def cell(r: dict, key: str, fmt: str = "{:.3f}") -> str:
    """One table cell: the row's value formatted, or "-" when the row has none."""
    return fmt.format(r[key]) if key in r else "-"


def serving_table(rows: list[dict]) -> str:
    head = ("| model | batch | dtype | eager ms | reduce-overhead ms | Ember ms | "
            "Ember/reduce-overhead | Ember replays (staged) | captures | layer-by-layer contexts |")
    lines = ["Serving loop (new input tensor each call, outputs kept):", head, "|" + " --- |" * 10]
    f = cell
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r.get('dtype', 'f16')} | {f(r, 'eager_serving_ms')} | "
            f"{f(r, 'reduce_overhead_serving_ms')} | {f(r, 'ember_serving_ms')} | "
            f"{f(r, 'ember_serving_vs_reduce_overhead', '{:.2f}')} | "
            f"{r.get('ember_after_serving_graph_replays', '-')} "
            f"({r.get('ember_after_serving_staged_replays', '-')}) | "
            f"{r.get('ember_after_serving_graph_captures', '-')} | "
            f"{r.get('ember_after_serving_eager_contexts', '-')} |")
    return "\n".join(lines)


def ember_torch_compile(row: dict, model, xin, ref, iters: int, ember_settings: dict) -> None:
    """torch.compile(model, backend="ember"): first call (the build) and median latency."""
    torch._dynamo.reset()
    ember.engine_cache.reset_stats()
    start = time.perf_counter()
    tc = torch.compile(model, backend="ember", options=dict(device="cuda", **ember_settings))
    with torch.no_grad():
        out = tc(*xin)
        torch.cuda.synchronize()
    row["ember_tc_build_s"] = time.perf_counter() - start
    row["ember_tc_builds"] = ember.engine_cache.stats()["builds"]
    row["ember_tc_cache_hits"] = ember.engine_cache.stats()["hits"]
    row["ember_tc_ms"] = median_ms(tc, xin, iters)
    row["ember_tc_cos"], row["ember_tc_maxerr"] = accuracy(first_tensor(out).float(), ref)
    if "reduce_overhead_ms" in row:
        row["ember_tc_vs_reduce_overhead"] = row["ember_tc_ms"] / row["reduce_overhead_ms"]
    torch._dynamo.reset()


def torch_compile_table(rows: list[dict]) -> str:
    head = ("| model | batch | dtype | reduce-overhead ms | backend=ember ms | "
            "ember/reduce-overhead | first call s | engines built | from cache | cosine vs f32 |")
    lines = ["torch.compile(backend=\"ember\"):", head, "|" + " --- |" * 10]
    f = cell
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r.get('dtype', 'f16')} | "
                     f"{f(r, 'reduce_overhead_ms')} | "
                     f"{f(r, 'ember_tc_ms')} | {f(r, 'ember_tc_vs_reduce_overhead', '{:.2f}')} | "
                     f"{f(r, 'ember_tc_build_s', '{:.1f}')} | {r.get('ember_tc_builds', '-')} | "
                     f"{r.get('ember_tc_cache_hits', '-')} | {f(r, 'ember_tc_cos', '{:.6f}')} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| model | batch | dtype | eager ms | compile ms | reduce-overhead ms | Ember ms | "
            "Ember/eager | Ember/best compile | reduce-overhead build s | Ember build s | engines | "
            "fallback | cosine vs f32 | max err |")
    lines = [head, "|" + " --- |" * 15]
    f = cell
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r.get('dtype', 'f16')} | {f(r, 'eager_ms')} | "
                     f"{f(r, 'compile_ms')} | {f(r, 'reduce_overhead_ms')} | {f(r, 'ember_ms')} | "
                     f"{f(r, 'ember_vs_eager', '{:.2f}')} | {f(r, 'ember_vs_best_compile', '{:.2f}')} | "
                     f"{f(r, 'reduce_overhead_build_s', '{:.1f}')} | {f(r, 'ember_build_s', '{:.1f}')} | "
                     f"{r.get('ember_engines', '-')} | {r.get('ember_fallback_nodes', '-')} | "
                     f"{f(r, 'ember_cos', '{:.6f}')} | {f(r, 'ember_maxerr', '{:.2e}')} |")
    return "\n".join(lines)


def roofline_table(rows: list[dict]) -> str:
    """What each row's engines must do at least (bench/roofline.py) and how near Ember gets."""
    head = ("| model | batch | dtype | GFLOP | MB moved | roofline ms | Ember ms | "
            "roofline fraction | Ember TFLOP/s |")
    lines = ["Roofline (products' FLOPs and each layer's bytes against the GPU's peaks):", head,
             "|" + " --- |" * 9]
    f = cell
    for r in rows:
        if "ember_roofline_ms" not in r:
            continue
        tflops = r["ember_gflop"] / r["ember_ms"] if r.get("ember_ms") else None
        lines.append(f"| {r['model']} | {r['batch']} | {r.get('dtype', 'f16')} | "
                     f"{f(r, 'ember_gflop', '{:.1f}')} | {f(r, 'ember_mbytes', '{:.0f}')} | "
                     f"{f(r, 'ember_roofline_ms')} | {f(r, 'ember_ms')} | "
                     f"{f(r, 'ember_roofline_fraction', '{:.2f}')} | "
                     f"{'-' if tflops is None else f'{tflops:.0f}'} |")
    return "\n".join(lines)


def error_lines(rows: list[dict]) -> str:
    """The rows that failed, one line each, and the fallback nodes of rows that have any."""
    lines = [f"- {r['model']}:{r['batch']}:{r.get('dtype', 'f16')} failed: {r['error']}"
             for r in rows if "error" in r]
    lines += [f"- {r['model']}:{r['batch']}:{r.get('dtype', 'f16')} fallback: " +
              "; ".join(r["ember_fallback"]) for r in rows if r.get("ember_fallback")]
    return "\n".join(lines)


def run_isolated(spec: tuple[str, int, str], argv: list[str], timeout: float) -> dict:
    """One row in a child process (`--isolate`): its JSON row, or an error row when the child
    crashed, was killed or ran past `timeout` seconds."""
    name, batch, dtype = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv,
               "--rows", f"{name}:{batch}:{dtype}", "--json", path]
        try:
            proc = subprocess.run(cmd, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return {"model": name, "batch": batch, "dtype": dtype,
                    "error": f"row timed out after {timeout:.0f} s (--row-timeout)"}
        try:
            with open(path) as fh:
                return json.load(fh)[0]
        except (OSError, ValueError, IndexError):
            return {"model": name, "batch": batch, "dtype": dtype,
                    "error": f"the row's process exited with status {rc} before writing a row"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=None,
                   help=f"model:batch[:dtype],... (default {DEFAULT_ROWS}; models: "
                        f"{', '.join(bench_models.MODELS)})")
    p.add_argument("--suite", default=None, choices=["wide"],
                   help="a preset of rows instead of --rows: 'wide' is every model at batch 1 "
                        "and its serving batch")
    p.add_argument("--models", default=None,
                   help="with --suite: only these models (comma-separated), to split a run")
    p.add_argument("--dtypes", default="f16",
                   help="precisions of rows that name none: f16, bf16 or f16,bf16")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--compile-modes", default="default,reduce-overhead",
                   help="torch.compile modes to time ('' for none)")
    p.add_argument("--json", default=None)
    p.add_argument("--pool", type=int, default=4, help="serving loop: input tensors in turn")
    p.add_argument("--keep", type=int, default=8, help="serving loop: outputs held at once")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="Ember's channels_last setting (auto: the builder's choice, NHWC for f16 today)")
    p.add_argument("--ember-torch-compile", action="store_true",
                   help="also time torch.compile(model, backend='ember')")
    p.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="store and reuse Ember engines in DIR (run twice to time cached builds)")
    p.add_argument("--isolate", action="store_true",
                   help="run each row in its own process (a crash or hang costs one row)")
    p.add_argument("--row-timeout", type=float, default=600.0,
                   help="with --isolate: seconds a row may take before it is stopped")
    p.add_argument("--no-tables", action="store_true", help=argparse.SUPPRESS)  # --isolate's rows
    args = p.parse_args()
    if args.suite and args.rows:
        raise SystemExit("bench.py: give --rows or --suite, not both")
    if args.models and not args.suite:
        raise SystemExit("bench.py: --models narrows a --suite; with --rows, list the rows")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    specs = parse_rows(suite_rows(args.suite, args.models) if args.suite
                       else args.rows or DEFAULT_ROWS, dtypes)
    ember_settings = channels_last_settings(args.channels_last)
    if args.engine_cache:
        ember_settings.update(cache_built_engines=True, reuse_cached_engines=True,
                              engine_cache_dir=args.engine_cache)
    modes = [m for m in args.compile_modes.split(",") if m]
    # What a child row process gets: every setting but the rows, the JSON path and --isolate.
    child_argv = ["--iters", str(args.iters), "--compile-modes", args.compile_modes,
                  "--pool", str(args.pool), "--keep", str(args.keep),
                  "--channels-last", args.channels_last, "--no-tables"]
    if args.ember_torch_compile:
        child_argv.append("--ember-torch-compile")
    if args.engine_cache:
        child_argv += ["--engine-cache", args.engine_cache]
    rows = []
    start = time.perf_counter()
    for spec in specs:
        name, batch, dtype = spec
        row_start = time.perf_counter()
        if args.isolate:
            rows.append(run_isolated(spec, child_argv, args.row_timeout))
        else:
            try:
                rows.append(run_row(name, batch, args.iters, modes, ember_settings,
                                    args.pool, args.keep, args.ember_torch_compile, dtype))
            except Exception as e:  # noqa: BLE001 - a failing row is reported, the others still run
                rows.append({"model": name, "batch": batch, "dtype": dtype,
                             "error": f"{type(e).__name__}: {e}"})
        rows[-1]["row_s"] = time.perf_counter() - row_start
        if "error" in rows[-1]:
            print(f"row {name}:{batch}:{dtype} failed: {rows[-1]['error']}", flush=True)
        print(json.dumps(rows[-1]), flush=True)
        if args.json:  # after every row, so a run cut short keeps what it measured
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    if args.no_tables:
        return
    ok = [r for r in rows if "error" not in r]
    print(table(ok))
    print()
    print(serving_table(ok))
    print()
    print(roofline_table(ok))
    if args.ember_torch_compile:
        print()
        print(torch_compile_table(ok))
    problems = error_lines(rows)
    if problems:
        print()
        print(problems)
    print(f"\n{len(rows)} rows ({len(rows) - len(ok)} failed) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Ember against eager PyTorch and torch.compile on the GPU (run on the device machine).

    python bench/bench.py [--rows resnet50:1,resnet50:32,bert:1,...] [--iters 50]
                          [--compile-modes default,reduce-overhead] [--json out.json]
                          [--ember-torch-compile] [--engine-cache DIR]

Each row: a model in f16 with random weights on one GPU; for every mode the median latency of
`--iters` CUDA-event-timed calls after warm-up, the build/compile time, and the accuracy of the
f16 result against eager f32 (cosine similarity, max abs error). Prints a markdown table.

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
import json
import statistics
import time

import torch

import ember


def make(name: str, batch: int):
    if name == "resnet50":
        import torchvision
        model = torchvision.models.resnet50(weights=None)
        x = torch.randn(batch, 3, 224, 224)
    elif name == "bert":
        import transformers
        model = transformers.BertModel(transformers.BertConfig())
        x = torch.randint(0, 30522, (batch, 128))
    elif name == "gpt2":
        import transformers
        model = transformers.GPT2Model(transformers.GPT2Config(use_cache=False))
        x = torch.randint(0, 50257, (batch, 128))
    else:
        raise ValueError(f"unknown model '{name}' (resnet50, bert, gpt2)")
    return model.eval().cuda(), x.cuda()


def channels_last_settings(choice: str) -> dict:
    """Ember's compile settings for a --channels-last choice (auto: the builder's own)."""
    return {} if choice == "auto" else {"channels_last": choice == "on"}


def first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
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


def median_ms(fn, x, iters: int, warmup: int = 10) -> float:
    """The benchmark pattern: one input tensor reused, every output dropped."""
    return timed_calls_ms(lambda i: fn(x), iters, warmup)


def serving_ms(fn, pool: list, iters: int, keep: int, clone: bool = False,
               warmup: int = 10) -> float:
    """Median CUDA-event ms of one call in a serving loop: inputs in turn from `pool`, each
    output kept (the last `keep`), cloned first when `clone` (reduce-overhead reuses its output
    memory)."""
    kept: list = []

    def call(i):
        out = first_tensor(fn(pool[i % len(pool)]))
        kept.append(out.clone() if clone else out)
        if len(kept) > keep:
            kept.pop(0)

    return timed_calls_ms(call, iters, warmup)


def input_pool(x: torch.Tensor, size: int) -> list:
    """`size` distinct input tensors like `x` (other data, other addresses)."""
    gen = torch.Generator(device=x.device).manual_seed(1)
    if x.is_floating_point():
        return [torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) for _ in range(size)]
    hi = int(x.max().item()) + 1
    return [torch.randint(0, hi, x.shape, generator=gen, device=x.device, dtype=x.dtype)
            for _ in range(size)]


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    a, b = out.flatten().double(), ref.flatten().double()
    cos = (a @ b / (a.norm() * b.norm())).item()
    return cos, (a - b).abs().max().item()


def run_row(name: str, batch: int, iters: int, modes: list[str], ember_settings: dict,
            pool_size: int = 4, keep: int = 8, torch_compile_backend: bool = False) -> dict:
    torch.manual_seed(0)
    model, x = make(name, batch)
    torch.backends.cudnn.allow_tf32 = False  # an exact f32 reference (eager convs default to TF32)
    with torch.no_grad():
        ref = first_tensor(model(x)).float()
    torch.backends.cudnn.allow_tf32 = True
    model = model.half()
    xin = x.half() if x.is_floating_point() else x
    row = {"model": name, "batch": batch, "dtype": "f16", "gpu": torch.cuda.get_device_name()}
    pool = input_pool(xin, pool_size)
    with torch.no_grad():
        row["eager_ms"] = median_ms(model, xin, iters)
        row["eager_serving_ms"] = serving_ms(model, pool, iters, keep)
        row["eager_cos"], row["eager_maxerr"] = accuracy(first_tensor(model(xin)), ref)
    for mode in modes:
        key = "compile" if mode == "default" else mode.replace("-", "_")
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
        with torch.no_grad():
            compiled(xin)
            torch.cuda.synchronize()
        row[f"{key}_build_s"] = time.perf_counter() - start
        row[f"{key}_ms"] = median_ms(compiled, xin, iters)
        row[f"{key}_serving_ms"] = serving_ms(compiled, pool, iters, keep,
                                              clone=mode == "reduce-overhead")
        del compiled
    torch._dynamo.reset()
    report = ember.dynamo.CompilationReport()
    start = time.perf_counter()
    gm = ember.compile(model, inputs=[xin], device="cuda", report=report, **ember_settings)
    row["ember_build_s"] = time.perf_counter() - start
    row["ember_cache_hits"] = sum(bool(e["cached"]) for e in report.engines)
    row["ember_engines"] = len(report.engines)
    row["ember_fallback_nodes"] = len(report.fallback)
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
    row["ember_serving_ms"] = serving_ms(gm, pool, iters, keep)
    graph_stats("ember_after_serving")
    with torch.no_grad():
        row["ember_cos"], row["ember_maxerr"] = accuracy(first_tensor(gm(xin)).float(), ref)
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
    head = ("| model | batch | eager ms | reduce-overhead ms | Ember ms | Ember/reduce-overhead | "
            "Ember replays (staged) | captures | layer-by-layer contexts |")
    lines = ["Serving loop (new input tensor each call, outputs kept):", head, "|" + " --- |" * 9]
    f = cell
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {f(r, 'eager_serving_ms')} | "
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
        out = tc(xin)
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
    head = ("| model | batch | reduce-overhead ms | backend=ember ms | ember/reduce-overhead | "
            "first call s | engines built | from cache | cosine vs f32 |")
    lines = ["torch.compile(backend=\"ember\"):", head, "|" + " --- |" * 9]
    f = cell
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {f(r, 'reduce_overhead_ms')} | "
                     f"{f(r, 'ember_tc_ms')} | {f(r, 'ember_tc_vs_reduce_overhead', '{:.2f}')} | "
                     f"{f(r, 'ember_tc_build_s', '{:.1f}')} | {r.get('ember_tc_builds', '-')} | "
                     f"{r.get('ember_tc_cache_hits', '-')} | {f(r, 'ember_tc_cos', '{:.6f}')} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| model | batch | eager ms | compile ms | reduce-overhead ms | Ember ms | Ember/eager | "
            "Ember/best compile | Ember build s | engines | fallback | cosine vs f32 | max err |")
    lines = [head, "|" + " --- |" * 13]
    f = cell
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {f(r, 'eager_ms')} | {f(r, 'compile_ms')} | "
                     f"{f(r, 'reduce_overhead_ms')} | {f(r, 'ember_ms')} | {f(r, 'ember_vs_eager', '{:.2f}')} | "
                     f"{f(r, 'ember_vs_best_compile', '{:.2f}')} | {f(r, 'ember_build_s', '{:.1f}')} | "
                     f"{r.get('ember_engines', '-')} | {r.get('ember_fallback_nodes', '-')} | "
                     f"{f(r, 'ember_cos', '{:.6f}')} | {f(r, 'ember_maxerr', '{:.2e}')} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="resnet50:1,resnet50:32,bert:1,bert:32,gpt2:1,gpt2:32")
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
    args = p.parse_args()
    ember_settings = channels_last_settings(args.channels_last)
    if args.engine_cache:
        ember_settings.update(cache_built_engines=True, reuse_cached_engines=True,
                              engine_cache_dir=args.engine_cache)
    modes = [m for m in args.compile_modes.split(",") if m]
    rows = []
    for spec in args.rows.split(","):
        name, batch = spec.split(":")
        try:
            rows.append(run_row(name, int(batch), args.iters, modes, ember_settings,
                                args.pool, args.keep, args.ember_torch_compile))
        except Exception as e:  # noqa: BLE001 - a failing row is reported, the others still run
            rows.append({"model": name, "batch": int(batch), "error": f"{type(e).__name__}: {e}"})
            print(f"row {spec} failed: {type(e).__name__}: {e}", flush=True)
        print(json.dumps(rows[-1]), flush=True)
        if args.json:  # after every row, so a run cut short keeps what it measured
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    print(table([r for r in rows if "error" not in r]))
    print()
    print(serving_table([r for r in rows if "error" not in r]))
    if args.ember_torch_compile:
        print()
        print(torch_compile_table([r for r in rows if "error" not in r]))


if __name__ == "__main__":
    main()

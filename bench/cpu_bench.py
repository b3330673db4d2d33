"""Ember's CPU back end against eager PyTorch, in repeated whole processes (a CPU-only machine).

    python bench/cpu_bench.py [--rows resnet18:4,bert:1] [--repeats 5] [--iters 10]
                              [--json out.json]

Each row is timed in `--repeats` rounds; a round starts one process for eager and then one for
Ember (eager, Ember, eager, Ember, ...), so load from other work on the machine falls on both
alike. A process builds the model (random weights, f32), for Ember compiles it with
`ember.compile(..., device="cpu")`, makes 2 warm-up calls and reports the median of `--iters`
`time.perf_counter()`-timed calls. The table gives, per row and mode, the median over the rounds
and the range (min to max), Ember's ratio to eager (of the medians), and Ember's max abs error
against eager. Both modes run with PyTorch's thread count (torch.get_num_threads()), which
Ember's CPU back end follows. The 1-min load average before and after is printed, since a busy
machine moves every number.

Rows: resnet18:<batch> (torchvision, 224x224), resnet50:<batch>, bert:<batch> (BERT-base,
seq 128).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def make(name: str, batch: int):
    import torch
    torch.manual_seed(0)
    if name in ("resnet18", "resnet50"):
        import torchvision
        model = getattr(torchvision.models, name)(weights=None)
        x = torch.randn(batch, 3, 224, 224)
    elif name == "bert":
        import transformers
        model = transformers.BertModel(transformers.BertConfig())
        x = torch.randint(0, 30522, (batch, 128))
    else:
        raise ValueError(f"unknown model '{name}' (resnet18, resnet50, bert)")
    return model.eval(), x


def first_tensor(out):
    import torch
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def child(row: str, mode: str, iters: int) -> dict:
    """One process's measurement (run with --child)."""
    import torch
    name, batch = row.split(":")
    model, x = make(name, int(batch))
    result = {"row": row, "mode": mode, "threads": torch.get_num_threads()}
    with torch.no_grad():
        fn = model
        if mode == "ember":
            import ember
            start = time.perf_counter()
            fn = ember.compile(model, inputs=[x], device="cpu")
            result["compile_s"] = time.perf_counter() - start
            result["max_abs_err"] = (first_tensor(fn(x)) - first_tensor(model(x))).abs().max().item()
        for _ in range(2):
            fn(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
    result["median_ms"] = statistics.median(times)
    return result


def run_child(row: str, mode: str, iters: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", row, mode, "--iters", str(iters)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{row} {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="resnet18:4,bert:1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("ROW", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.iters)))
        return

    load_before = os.getloadavg()[0]
    results = []
    for r in range(args.repeats):
        for row in args.rows.split(","):
            for mode in ("eager", "ember"):
                res = run_child(row, mode, args.iters)
                res["round"] = r
                results.append(res)
                print(f"round {r} {row:12s} {mode:6s} {res['median_ms']:9.1f} ms "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    print(f"\n{args.repeats} rounds, {args.iters} timed calls per process; 1-min load average "
          f"{load_before:.1f} before, {load_after:.1f} after; "
          f"threads {sorted({r['threads'] for r in results})}\n")
    print("| row | eager ms, median (min to max) | Ember ms, median (min to max) "
          "| Ember / eager | Ember max abs err |")
    print("| --- | --- | --- | --- | --- |")
    for row in args.rows.split(","):
        cell = {}
        for mode in ("eager", "ember"):
            ms = [r["median_ms"] for r in results if r["row"] == row and r["mode"] == mode]
            cell[mode] = (statistics.median(ms), min(ms), max(ms))
        err = max(r["max_abs_err"] for r in results if r["row"] == row and r["mode"] == "ember")
        e, m = cell["eager"], cell["ember"]
        print(f"| {row} | {e[0]:.1f} ({e[1]:.1f} to {e[2]:.1f}) | {m[0]:.1f} ({m[1]:.1f} to "
              f"{m[2]:.1f}) | {m[0] / e[0]:.2f} | {err:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": load_before, "load_after": load_after, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()

"""Where the host RSS of compile/run/free cycles goes, stage by stage (the soak's open question).

    PYTHONPATH=python python tools/rss_by_stage.py [--cycles 60] [--stages export,...]

Each stage runs the soak's cycle model (tests/python/test_soak.py: Block, fc1 2 MiB wide) up to
that stage, 10 warm-up cycles then `--cycles` measured ones, in a process of its own, and
reports the RSS growth per cycle after clearing PyTorch's ShapeEnv lru_cache and trimming
glibc's free lists (test_soak's drop_pytorch_shape_caches):

- export: torch.export.export with a dynamic batch, as ember.compile does;
- export_decomp: and ExportedProgram.run_decompositions with Ember's table;
- dryrun: ember.compile(..., dryrun=True): export, decomposition, import, lowering, partition;
- full: the soak's cycle (compile, one call, free).

If full is no higher than dryrun, and dryrun no higher than export_decomp, the growth is
PyTorch's export and decomposition, not Ember's engines.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("export", "export_decomp", "dryrun", "full")


def run_stage(stage: str, cycles: int) -> float:
    import torch

    import ember
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    import test_soak as soak

    x = torch.randn(4, 3, 16, 16)
    spec = ember.Input(min_shape=(1, 3, 16, 16), opt_shape=(8, 3, 16, 16),
                       max_shape=(16, 3, 16, 16), dtype=torch.float32)

    def cycle():
        model = soak.Block(soak.CYCLE_WIDTH).eval()
        if stage in ("export", "export_decomp"):
            b = torch.export.Dim("b", min=1, max=16)
            ep = torch.export.export(model, (x,), dynamic_shapes=({0: b},))
            if stage == "export_decomp":
                ep = ep.run_decompositions(ember.dynamo.decomposition_table())
            del ep
        elif stage == "dryrun":
            gm = ember.compile(model, inputs=[spec], device="cpu", min_block_size=1, dryrun=True)
            del gm
        else:
            compiled = soak.compile_block(model)
            with torch.no_grad():
                compiled(x)
            del compiled
        del model
        gc.collect()

    for _ in range(10):
        cycle()
    soak.drop_pytorch_shape_caches()
    before = soak.host_rss_bytes()
    for _ in range(cycles):
        cycle()
    soak.drop_pytorch_shape_caches()
    return (soak.host_rss_bytes() - before) / cycles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=60)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(run_stage(args.child, args.cycles))
        return 0
    for stage in args.stages.split(","):
        if stage not in STAGES:
            p.error(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        out = subprocess.run([sys.executable, __file__, "--child", stage, "--cycles",
                              str(args.cycles)], capture_output=True, text=True, check=True)
        per_cycle = float(out.stdout.strip().splitlines()[-1])
        print(f"{stage:<14} {per_cycle / 1024:7.0f} KiB per cycle over {args.cycles} cycles",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator coverage: `python -m ember.coverage [--all] [--missing] [--json FILE]`.

Lists PyTorch's core aten operators (the overloads tagged ``torch.Tag.core``, the set
torch.export's decompositions lower to) and says for each whether Ember has a converter, whether
PyTorch's decomposition table (as Ember applies it) rewrites it into other ops, or neither (it
runs in PyTorch). Prints the counts, including every converter Ember registers beyond the core
set.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ember import _C
from ember._settings import op_key


def core_aten_overloads() -> dict[str, torch._ops.OpOverload]:
    """Every aten overload tagged core, keyed like Ember's converters ("aten::add.Tensor")."""
    out = {}
    for name in dir(torch.ops.aten):
        try:
            packet = getattr(torch.ops.aten, name)
        except (AttributeError, RuntimeError):
            continue
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if torch.Tag.core in op.tags:
                out[op_key(op)] = op
    return out


def coverage() -> dict:
    from ember.dynamo import decomposition_table
    converters = set(_C.converter_ops())
    decomposed = {op_key(op) for op in decomposition_table() if hasattr(op, "_schema")}
    rows = []
    for key, op in sorted(core_aten_overloads().items()):
        if key in converters:
            status = "converter"
        elif key in decomposed:
            status = "decomposed"
        else:
            status = "neither"
        rows.append({"op": key, "status": status})
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("converter", "decomposed", "neither")}
    # Converters registered from Python (ember.dynamo.converter / substitute), in this process.
    python = [{"op": e["op"], "converter": e["file"][len("python:"):], "priority": e["priority"],
               "supports_dynamic": e["supports_dynamic"]}
              for e in _C.converter_entries() if e["file"].startswith("python:")]
    return {"core": rows, "counts": counts, "converters_total": len(converters),
            "converter_ops": sorted(converters), "python_converters": python}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ember.coverage", description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="list every core op with its status")
    p.add_argument("--missing", action="store_true", help="list the core ops with neither")
    p.add_argument("--json", metavar="FILE", help="write the whole table as JSON")
    args = p.parse_args(argv)
    c = coverage()
    if args.all or args.missing:
        for r in c["core"]:
            if args.all or r["status"] == "neither":
                print(f"{r['status']:<11} {r['op']}")
    counts = c["counts"]
    total = sum(counts.values())
    print(f"core aten overloads: {total}; converter {counts['converter']}, "
          f"decomposed {counts['decomposed']}, neither {counts['neither']}")
    print(f"aten overloads with an Ember converter (core or not): {c['converters_total']}")
    for e in c["python_converters"]:
        print(f"python converter {e['op']}: {e['converter']} (priority {e['priority']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(c, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

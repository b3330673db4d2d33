"""The main job: compile a real PyTorch model with Ember and run it, with a short report.

    python examples/compile_model.py [--model resnet18] [--batch 4] [--size 224] [--device cpu|cuda]

Builds torchvision's model (random weights), compiles it through the dynamo path
(torch.export -> Ember engines inside a torch.fx.GraphModule), checks it against eager PyTorch
and times both.
"""

import argparse
import statistics
import time

import torch
import torchvision

import ember


def median_ms(fns, x, iters):
    """Median latency of each of `fns` on x, timed in turn (first, second, first, ...): load
    from other work on the machine then falls on every function alike."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for fn in fns:
        for _ in range(2):
            fn(x)
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, t in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args()

    torch.manual_seed(0)
    # The example puts the model on the GPU when there is one; Ember then builds for where the
    # model is (an explicit --device overrides both).
    gpu = torch.cuda.is_available() and "cuda" in ember.available_backends()
    device = torch.device(args.device) if args.device else torch.device("cuda" if gpu else "cpu")
    backend = device.type
    torch.backends.cudnn.allow_tf32 = False  # eager f32 as the exact reference
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    spec = ember.Input(min_shape=(1, 3, args.size, args.size),
                       opt_shape=(args.batch, 3, args.size, args.size),
                       max_shape=(max(8, args.batch), 3, args.size, args.size))
    report = ember.dynamo.CompilationReport()
    start = time.perf_counter()
    compiled = ember.compile(model, inputs=[spec], device=args.device, report=report)
    compile_s = time.perf_counter() - start
    print(report)

    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
        cos = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0).item()
        err = (got - expected).abs().max().item()
        eager_ms, ember_ms = median_ms([model, compiled], x, args.iters)
    print(f"\n{args.model} batch {args.batch} {args.size}x{args.size}, back end '{backend}': "
          f"compiled in {compile_s:.1f} s, {len(report.engines)} engine(s), "
          f"{len(report.fallback)} node(s) in PyTorch")
    print(f"accuracy vs eager: cosine {cos:.6f}, max abs error {err:.2e}")
    print(f"median latency over {args.iters} runs (interleaved): eager {eager_ms:.1f} ms, Ember {ember_ms:.1f} ms")
    print(f"top-1 class of sample 0: eager {expected[0].argmax().item()}, Ember {got[0].argmax().item()}")
    if backend == "cuda":
        stats = [getattr(compiled, n).cuda_graph_stats() for n in dir(compiled)
                 if n.startswith("_ember_engine_")]
        print(f"CUDA graphs: {sum(s[0] for s in stats)} replays, {sum(s[1] for s in stats)} "
              f"captures, {sum(s[2] for s in stats)} context(s) running layer by layer")
        reasons = {r for n in dir(compiled) if n.startswith("_ember_engine_")
                   for r in getattr(compiled, n).cuda_graph_disabled_reasons().splitlines()}
        for r in sorted(reasons):
            print(f"  graphs off: {r}")


if __name__ == "__main__":
    main()

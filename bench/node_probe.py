"""Which layers put extra nodes (memsets, memcpys) into an engine's CUDA graph: small f16 modules
with GPT-2 b32's shapes, each compiled alone and profiled, so a memset in a whole model's kernel
sequence (bench/kernel_profile.py --sequence) can be traced to the layer that issues it.

    python bench/node_probe.py [--probes linear,ln_linear,...] [--graphs both|on|off]

Each probe prints its kernels per call in launch order (library memsets show as `Memset`), once
with CUDA graphs and once without. With EMBER_TACTIC_LOG=1 the tactic timing prints each
cuBLASLt candidate's time, memset nodes and workspace, and cuDNN's SDPA against Ember's kernel. A memset node costs more than its own 1 us: the graph's next
kernel starts ~2 us later than after a kernel node (session 36's GPT-2 sequence).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import ember

B, T, D, H = 32, 128, 768, 12


class Linear(torch.nn.Module):  # GPT-2's QKV projection: beta = 0, bias epilogue
    def __init__(self, n_in=D, n_out=3 * D):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(x)


class LinearGelu(Linear):  # fc1: bias + tanh-GELU epilogue
    def __init__(self):
        super().__init__(D, 4 * D)

    def forward(self, x):
        return F.gelu(self.fc(x), approximate="tanh")


class LinearResidual(Linear):  # fc2 / the out-projection: the residual as C (beta = 1)
    def __init__(self):
        super().__init__(D, D)

    def forward(self, x):
        return self.fc(x) + x


class LnLinear(Linear):  # the layer norm before QKV
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(D)

    def forward(self, x):
        return self.fc(self.ln(x))


class Sdpa(torch.nn.Module):  # causal attention on the QKV projection's split
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(D, 3 * D)

    def forward(self, x):
        q, k, v = self.fc(x).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


PROBES = {"linear": Linear, "linear_gelu": LinearGelu, "linear_residual": LinearResidual,
          "ln_linear": LnLinear, "sdpa": Sdpa}


def kernels_per_call(fn, x, iters: int = 5) -> list[str]:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn(x)
            torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    per = len(events) // iters
    return [e.name[:60] for e in events[-per:]] if per else []


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", default=",".join(PROBES))
    p.add_argument("--graphs", choices=["both", "on", "off"], default="both")
    args = p.parse_args()
    x = torch.randn(B, T, D, device="cuda", dtype=torch.half)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.graphs]
    for name in args.probes.split(","):
        torch.manual_seed(0)
        model = PROBES[name]().cuda().half().eval()
        for graphs in modes:
            # min_block_size=1: a one-layer module is an engine, not left to PyTorch.
            gm = ember.compile(model, inputs=[x], device="cuda", cuda_graphs=graphs,
                               min_block_size=1)
            names = kernels_per_call(gm, x)
            memsets = sum(n.startswith("Memset") for n in names)
            print(f"{name} (graphs {'on' if graphs else 'off'}): {len(names)} kernels, "
                  f"{memsets} memsets: " + " | ".join(names))
            del gm


if __name__ == "__main__":
    main()

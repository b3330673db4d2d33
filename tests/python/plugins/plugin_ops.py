"""Custom ops for the plugin tests, defined with torch.library (CPU kernels written with torch
ops, fake implementations for torch.export). Imported by the tests and by the fresh processes
that load saved engines."""

import torch


@torch.library.custom_op("ember_test::scaled_add", mutates_args=())
def scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return x + alpha * y


@scaled_add.register_fake
def _(x, y, alpha):
    return torch.empty_like(x)


@torch.library.custom_op("ember_test::split_scale", mutates_args=())
def split_scale(x: torch.Tensor, k: int, scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :k] * scales[0], x[..., k:] * scales[1]


@split_scale.register_fake
def _(x, k, scales):
    return x.new_empty(*x.shape[:-1], k), x.new_empty(*x.shape[:-1], x.shape[-1] - k)


@torch.library.custom_op("ember_test::cube", mutates_args=())
def cube(x: torch.Tensor) -> torch.Tensor:
    return x * x * x


@cube.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("ember_test::soft_clip_eager", mutates_args=())
def soft_clip_eager(x: torch.Tensor, t: float) -> torch.Tensor:
    return t * torch.tanh(x / t)


class UsesScaledAdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 8)
        self.fc2 = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.ops.ember_test.scaled_add(h, x, 0.5)
        return self.fc2(h) * 2.0

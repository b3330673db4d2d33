"""aten::index.Tensor with several leading index tensors (x[i, j], broadcasting)."""

import pytest
import torch

from harness import DTYPES_FLOAT, check_op


@pytest.mark.parametrize("dtype", DTYPES_FLOAT + [torch.int64])
def test_two_broadcast_indices(dtype):
    x = torch.arange(2 * 16).reshape(2, 16).to(dtype)
    i = torch.arange(2).view(2, 1, 1, 1)
    j = torch.arange(16).view(1, 1, 16, 1)
    check_op(lambda x, i, j: x[i, j], [x, i, j], expect_ops={"aten::index.Tensor"})


def test_negative_indices_and_trailing_dims():
    x = torch.randn(4, 5, 3)
    i = torch.tensor([[0, -1], [2, -4]])
    j = torch.tensor([-5, 4])
    check_op(lambda x, i, j: x[i, j], [x, i, j])


def test_three_indices_i32():
    x = torch.randn(3, 4, 5)
    i = torch.tensor([2, 0], dtype=torch.int32)
    j = torch.tensor([1, 3], dtype=torch.int32)
    k = torch.tensor([[4], [0]], dtype=torch.int32)
    check_op(lambda x, i, j, k: x[i, j, k], [x, i, j, k])


def test_dynamic_data_dims():
    x = torch.randn(3, 6)
    i = torch.tensor([0, 2, 1])
    j = torch.tensor([5, -1, 0])
    n = torch.export.Dim("n", min=2, max=8)
    check_op(lambda x, i, j: x[i, j], [x, i, j], dynamic_shapes=(({1: n}, None, None),),
             extra_inputs=[(torch.randn(3, 8), i, j)])

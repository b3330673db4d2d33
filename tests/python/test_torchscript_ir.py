"""Importer unit tests as before/after IR text: the TorchScript lowering passes (TorchScript IR
in, TorchScript IR out) and the importer (TorchScript IR in, compiler IR text and each node's
role out). The C++ runs through torch.ops.ember.ts_lower_ir / ts_import_ir."""

import re
import textwrap

import pytest
import torch

import ember  # noqa: F401 - loads libember_torch.so


def lower(ir: str) -> str:
    return torch.ops.ember.ts_lower_ir(textwrap.dedent(ir))


def import_ir(ir: str, *inputs: str) -> str:
    return torch.ops.ember.ts_import_ir(textwrap.dedent(ir), list(inputs))


def body(text: str) -> list[str]:
    """IR lines without blank lines, stripped."""
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def test_lowering_inplace_to_functional_and_dropout_removed():
    out = lower("""
        graph(%self : NoneType, %x : Tensor):
          %one : int = prim::Constant[value=1]()
          %p : float = prim::Constant[value=0.5]()
          %f : bool = prim::Constant[value=0]()
          %y : Tensor = aten::relu_(%x)
          %z : Tensor = aten::add_(%y, %x, %one)
          %d : Tensor = aten::dropout(%z, %p, %f)
          return (%d)
    """)
    # relu_ mutates the graph input, which the caller observes, and add_ mutates its alias: both
    # stay in place (and run in TorchScript); dropout in eval is gone.
    assert body(out) == body("""
        graph(%self : NoneType,
              %x : Tensor):
          %2 : int = prim::Constant[value=1]()
          %5 : Tensor = aten::relu_(%x)
          %6 : Tensor = aten::add_(%5, %x, %2)
          return (%6)
    """)


def test_lowering_inplace_on_fresh_value_becomes_functional():
    out = lower("""
        graph(%self : NoneType, %x : Tensor):
          %one : int = prim::Constant[value=1]()
          %y : Tensor = aten::mul(%x, %x)
          %z : Tensor = aten::relu_(%y)
          %w : Tensor = aten::add_(%z, %x, %one)
          return (%w)
    """)
    lines = body(out)
    assert "aten::relu(" in out and "aten::add(" in out
    assert not any("relu_" in line or "add_" in line for line in lines)


def test_lowering_tuples_and_constant_propagation():
    out = lower("""
        graph(%self : NoneType, %x : Tensor):
          %two : int = prim::Constant[value=2]()
          %three : int = prim::Constant[value=3]()
          %s : int = aten::add(%two, %three)
          %t : (Tensor, int) = prim::TupleConstruct(%x, %s)
          %a : Tensor, %b : int = prim::TupleUnpack(%t)
          %y : Tensor = aten::mul(%a, %b)
          return (%y)
    """)
    assert body(out) == body("""
        graph(%self : NoneType,
              %x : Tensor):
          %9 : int = prim::Constant[value=5]()
          %8 : Tensor = aten::mul(%x, %9)
          return (%8)
    """)


SIZES = """
    graph(%self : NoneType, %x : Tensor):
      %zero : int = prim::Constant[value=0]()
      %one : int = prim::Constant[value=1]()
      %m1 : int = prim::Constant[value=-1]()
      %two : int = prim::Constant[value=2]()
      %n : int = aten::size(%x, %zero)
      %c : int = aten::size(%x, %one)
      %h : int = aten::floordiv(%c, %two)
      %shape : int[] = prim::ListConstruct(%n, %two, %h)
      %t : Tensor = prim::NumToTensor(%n)
      %ni : int = aten::Int(%t)
      %shape2 : int[] = prim::ListConstruct(%ni, %m1)
      %y : Tensor = aten::reshape(%x, %shape)
      %w : Tensor = aten::view(%y, %shape2)
      %r : Tensor = aten::relu(%w)
      return (%r)
"""


def test_import_evaluates_sizes_static():
    out = import_ir(SIZES, "(4,8)@f32")
    ir, roles = out.split("#", 1)
    assert body(ir) == body("""
        graph(%x: f32[4, 8] {fx="x"}):
          %v13 = aten::reshape(%x, [4, 2, 4]) : f32[4, 2, 4] {fx="v13"}
          %v14 = aten::view(%v13, [4, -1]) : f32[4, 8] {fx="v14"}
          %v15 = aten::relu(%v14) : f32[4, 8] {fx="v15"}
          return (%v15)
    """)
    for line in ["aten::size.int (%6): static", "aten::floordiv.int (%8): static",
                 "prim::ListConstruct (%9): static", "prim::NumToTensor.Scalar (%10): static",
                 "aten::Int.Tensor (%11): static", "aten::reshape (%13): imported"]:
        assert line in out, out


def test_import_dynamic_size_is_a_symbol():
    out = import_ir(SIZES, "[(1,8);(4,8);(16,8)]@f32")
    ir = out.split("#", 1)[0]
    assert body(ir) == body("""
        graph(%x: f32[x_d0, 8] {fx="x"}):
          symbol x_d0 = [1, 4, 16]
          %v13 = aten::reshape(%x, [x_d0, 2, 4]) : f32[x_d0, 2, 4] {fx="v13"}
          %v14 = aten::view(%v13, [x_d0, -1]) : f32[x_d0, 8] {fx="v14"}
          %v15 = aten::relu(%v14) : f32[x_d0, 8] {fx="v15"}
          return (%v15)
    """)


def test_import_affine_size_arithmetic():
    out = import_ir("""
        graph(%self : NoneType, %x : Tensor):
          %zero : int = prim::Constant[value=0]()
          %two : int = prim::Constant[value=2]()
          %three : int = prim::Constant[value=3]()
          %m1 : int = prim::Constant[value=-1]()
          %n : int = aten::size(%x, %zero)
          %n2 : int = aten::mul(%n, %two)
          %n3 : int = aten::add(%n2, %three)
          %four : int = prim::Constant[value=4]()
          %shape : int[] = prim::ListConstruct(%n3, %four)
          %cat : Tensor[] = prim::ListConstruct(%x, %x, %x)
          %one : int = prim::Constant[value=1]()
          %xs : Tensor = aten::cat(%cat, %zero)
          %none : NoneType = prim::Constant()
          %r : Tensor = aten::zeros(%shape, %none, %none, %none, %none)
          return (%xs, %r)
    """, "[(1,4);(2,4);(8,4)]@f32")
    # x.size(0) * 2 + 3 is fitted as an affine form of the symbol.
    assert "aten::cat([%x, %x, %x], 0) : f32[x_d0*3, 4]" in out, out
    # A static tensor whose shape follows the input sizes is computed by the engine.
    assert "aten::zeros([x_d0*2+3, 4], None, None, None, None) : f32[x_d0*2+3, 4]" in out, out


def test_import_dtype_and_device_are_static():
    out = import_ir("""
        graph(%self : NoneType, %x : Tensor, %y : Tensor):
          %f : bool = prim::Constant[value=0]()
          %none : NoneType = prim::Constant()
          %dt : int = prim::dtype(%y)
          %z : Tensor = aten::to(%x, %dt, %f, %f, %none)
          %w : Tensor = aten::type_as(%x, %y)
          return (%z, %w)
    """, "(2,3)@f32", "(2,3)@f16")
    assert "prim::dtype (%5): static" in out
    assert out.count("aten::to.dtype(%x, dtype(f16), False, False, None) : f16[2, 3]") == 2, out


def test_import_data_dependent_scalar_is_not_static():
    out = import_ir("""
        graph(%self : NoneType, %x : Tensor):
          %s : Tensor = aten::sum(%x, %self)
          %f : float = aten::Float(%s)
          %y : Tensor = aten::relu(%x)
          %z : Tensor = aten::mul(%y, %f)
          return (%z)
    """, "(3,4)@f32")
    # float(x.sum()) reads tensor data: never folded; the mul that needs it runs in TorchScript.
    assert "aten::Float.Tensor (%3): torchscript" in out, out
    assert "aten::mul.Scalar (%5): opaque (argument 'other' depends on tensor data)" in out, out


def test_import_control_flow_is_opaque():
    out = import_ir("""
        graph(%self : NoneType, %x : Tensor):
          %none : NoneType = prim::Constant()
          %s : Tensor = aten::sum(%x, %none)
          %c : bool = aten::Bool(%s)
          %y : Tensor = prim::If(%c)
            block0():
              %a : Tensor = aten::relu(%x)
              -> (%a)
            block1():
              %b : Tensor = aten::neg(%x)
              -> (%b)
          %z : Tensor = aten::sigmoid(%y)
          return (%z)
    """, "(3,4)@f32")
    # The If is an IR node without a converter reading %x and, through aten::Bool (which stays
    # TorchScript), the sum: the partitioner sees every tensor it waits for. Its result (shape
    # from the example run) feeds the sigmoid, which an engine can take.
    total = re.search(r"%(\w+) = aten::sum\(%x, None\)", out)
    assert total, out
    m = re.search(r"%(\w+) = torchscript::prim__If\(%x, %" + total.group(1) + r"\) : f32\[3, 4\]",
                  out)
    assert m, out
    assert f"aten::sigmoid(%{m.group(1)})" in out
    assert "opaque (control flow runs in TorchScript)" in out


def test_import_static_if_is_inlined():
    out = import_ir("""
        graph(%self : NoneType, %x : Tensor):
          %four : int = prim::Constant[value=4]()
          %d : int = aten::dim(%x)
          %c : bool = aten::eq(%d, %four)
          %y : Tensor = prim::If(%c)
            block0():
              %a : Tensor = aten::relu(%x)
              -> (%a)
            block1():
              %b : Tensor = aten::neg(%x)
              -> (%b)
          return (%y)
    """, "[(1,3,4,4);(2,3,4,4);(8,3,4,4)]@f32")
    assert "aten::relu(%x)" in out and "aten::neg" not in out and "prim::If" not in out


def test_bad_input_spec_shows_the_form():
    with pytest.raises(RuntimeError, match=r"expected '\(1,3,224,224\)'"):
        import_ir(SIZES, "1x3x224")

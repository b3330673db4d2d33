"""Nothing runs in PyTorch uncounted (issue 13, section 3): nodes the importer cannot represent
are fallback like any other, a value an engine and a PyTorch node both need is computed once
(in the engine), and a compile that is mostly PyTorch says so."""

import warnings

import pytest
import torch

import ember
from converters.harness import assert_close, compile_cpu


def aten_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload)]


class ComplexMiddle(torch.nn.Module):
    """A linear + relu whose result both feeds another linear (engine work) and goes through
    view_as_complex (a complex tensor: the importer cannot represent it)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        c = torch.view_as_complex(h.reshape(4, 4, 2))
        r = torch.view_as_real(c * c).reshape(4, 8)
        return self.b(h) + r


def test_unrepresented_nodes_are_fallback_with_their_reason():
    torch.manual_seed(0)
    model = ComplexMiddle().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    ops = {op: why for _, op, why in report.fallback}
    assert "aten::view_as_complex" in ops, report
    assert ops["aten::view_as_complex"].startswith("not imported (aten::view_as_complex): "), ops
    assert "complex" in ops["aten::view_as_complex"]
    # The partition report's fallback list names them too.
    assert "aten::view_as_complex" in report.partition_report
    assert "not imported (aten::view_as_complex)" in report.partition_report
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_require_full_compilation_fails_on_unrepresented_nodes():
    model = ComplexMiddle().eval()
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError) as e:
        compile_cpu(model, [x], min_block_size=1, require_full_compilation=True)
    text = str(e.value)
    assert "require_full_compilation" in text
    assert "not imported (aten::view_as_complex)" in text, text


def test_a_value_for_an_engine_and_pytorch_is_computed_once():
    """h = relu(linear(x)) feeds both an engine and view_as_complex: the engine exports it, and
    PyTorch does not recompute linear and relu for the complex branch."""
    torch.manual_seed(0)
    model = ComplexMiddle().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    targets = aten_targets(gm)
    assert torch.ops.aten.relu.default not in targets, gm.graph
    assert torch.ops.aten.linear.default not in targets, gm.graph
    # Every PyTorch node of the stitched program is in the fallback list.
    counted = {name for name, _, _ in report.fallback}
    for n in gm.graph.nodes:
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and \
                n.target is not torch.ops.ember.execute_engine.default:
            assert n.name in counted, f"{n.name} ({n.target}) runs in PyTorch uncounted:\n{report}"
    with torch.no_grad():
        assert_close(gm(x), model(x))


class CloneToComplex(torch.nn.Module):
    """A clone (removed by lowering) that only a PyTorch node reads: PyTorch re-runs it, and
    the report says so."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        c = torch.view_as_complex(h.clone().reshape(4, 4, 2))
        return torch.view_as_real(c * c).reshape(4, 8) + h


def test_nodes_rerun_after_lowering_are_counted():
    torch.manual_seed(0)
    model = CloneToComplex().eval()
    x = torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    counted = {name for name, _, _ in report.fallback}
    for n in gm.graph.nodes:
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and \
                n.target is not torch.ops.ember.execute_engine.default:
            assert n.name in counted, f"{n.name} ({n.target}) runs in PyTorch uncounted:\n{report}"
    assert torch.ops.aten.relu.default not in aten_targets(gm)
    with torch.no_grad():
        assert_close(gm(x), model(x))


class Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1.0


def test_zero_engines_below_min_block_size_warns_once_with_the_fix():
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm, report = compile_cpu(Tiny(), [x], min_block_size=5)
    ours = [w for w in caught if "builds no engine" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "min_block_size=5" in str(ours[0].message)
    assert "min_block_size=1" in str(ours[0].message)
    assert not report.engines


def test_zero_engines_when_every_build_fails_warns_with_the_fix(monkeypatch):
    x = torch.randn(4, 8)

    def failing_build(*args, **kwargs):
        raise RuntimeError("synthetic build failure")

    monkeypatch.setattr(ember.dynamo._C, "build_segment", failing_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm, report = compile_cpu(Tiny(), [x], min_block_size=1)
    ours = [w for w in caught if "builds no engine" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "every engine build failed" in str(ours[0].message)
    assert "pass_through_build_failures=True" in str(ours[0].message)
    # The failed segment's nodes are fallback, with the build error as their reason.
    assert report.fallback and all("failed to build" in why for _, _, why in report.fallback)
    with torch.no_grad():
        assert_close(gm(x), Tiny()(x))


class MostlyForced(torch.nn.Module):
    def forward(self, x):
        for _ in range(4):
            x = torch.sin(x) * 2.0
        return torch.relu(x) + 1.0


def test_more_fallback_than_engine_nodes_warns():
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = compile_cpu(MostlyForced(), [x], min_block_size=1,
                                torch_executed_ops=["aten::sin", "aten::mul"])
    ours = [w for w in caught if "run in PyTorch and only" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "torch_executed_ops" in str(ours[0].message)
    assert len(report.fallback) > report.engine_nodes() > 0


def test_a_compile_mostly_in_engines_does_not_warn():
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_cpu(MostlyForced(), [x], min_block_size=1)
    assert not [w for w in caught if str(w.message).startswith("ember:")], \
        [str(w.message) for w in caught]


class ToOtherDevice(torch.nn.Module):
    """CPU work, a copy to a CUDA device, then work on that device. Exports without a GPU (the
    export's tensors are fake)."""

    def forward(self, x):
        h = torch.relu(x * 2)
        return (h.to("cuda") + 1).sum()


def test_nodes_on_another_device_than_the_engine_run_in_pytorch():
    """An engine's tensors all live on its device, the program's: the copy to CUDA and every
    node after it in this CPU program run in PyTorch, each with a reason naming the device; the
    CPU work before them is still an engine (the GPU run of test_creation.py checks the
    .to("cpu") mirror case end to end). A program compiled for another device as a whole
    (device="cuda" for CPU example tensors) keeps its nodes: test_engine.py covers that."""
    ep = torch.export.export(ToOtherDevice(), (torch.randn(3, 4),))
    report = ember.dynamo.CompilationReport()
    ember.dynamo.compile(ep, [torch.randn(3, 4)], device="cpu", min_block_size=1, report=report,
                         dryrun=True)
    ops = {op: why for _, op, why in report.fallback}
    for op in ("aten::_to_copy", "aten::add.Tensor", "aten::sum"):
        assert op in ops, report.fallback
        assert "device 'cuda:0'" in ops[op] and "program's cpu device" in ops[op], ops[op]
    assert "aten::mul.Tensor" not in ops and "aten::relu" not in ops, report.fallback


def _scalar_fill_graph(reader_on_cpu: bool):
    """lifted 0-dim CPU constant -> clone -> fill.Tensor into a slice of a program-device tensor
    (torchvision Swin's shifted-window mask, on a "meta" program device so that no GPU is
    needed), or, with `reader_on_cpu`, an add with a full CPU tensor reading the clone."""
    g = torch.fx.Graph()
    const, x, other = g.placeholder("c_lifted"), g.placeholder("x"), g.placeholder("cpu_x")
    clone = g.call_function(torch.ops.aten.clone.default, (const,))
    piece = g.call_function(torch.ops.aten.slice.Tensor, (x, 0, 0, 2))
    fill = g.call_function(torch.ops.aten.fill.Tensor, (piece, clone))
    add = g.call_function(torch.ops.aten.add.Tensor, (other, clone))
    g.output((fill, add) if reader_on_cpu else fill)
    const.meta["val"] = clone.meta["val"] = torch.tensor(3.0)
    x.meta["val"] = torch.empty(4, 4, device="meta")
    piece.meta["val"] = fill.meta["val"] = torch.empty(2, 4, device="meta")
    other.meta["val"] = add.meta["val"] = torch.empty(4, 4)
    if not reader_on_cpu:
        g.erase_node(add)
    return clone, fill


def test_a_cpu_scalar_made_from_constants_is_not_on_another_device():
    """PyTorch lets an op on any device read a 0-dim CPU tensor: a scalar made from lifted
    constants and read by program-device ops is an engine constant, not a device change (Swin-T
    had 290 fallback nodes on an H100 from its mask fills before this)."""
    from ember._importer import _Exempt, foreign_device, scalar_constant

    clone, fill = _scalar_fill_graph(reader_on_cpu=False)
    assert foreign_device(clone, "meta", {"c_lifted"}) == "cpu"  # the old rule
    assert scalar_constant(clone, "meta", {"c_lifted"})
    exempt = _Exempt({"c_lifted"}, {clone.name})
    assert foreign_device(fill, "meta", exempt) is None
    assert foreign_device(fill, "meta", {"c_lifted"}) == "cpu"
    # Not a constant: a scalar from a non-constant input stays on its device.
    assert not scalar_constant(clone, "meta", set())
    # A CPU program has nothing to exempt.
    assert not scalar_constant(clone, "cpu", {"c_lifted"})


def test_a_cpu_scalar_read_by_cpu_work_stays_in_pytorch():
    """The same scalar also read by an op on full CPU tensors: that reader runs in PyTorch and
    wants a CPU tensor, so the scalar is not moved into the engine."""
    from ember._importer import scalar_constant

    clone, _ = _scalar_fill_graph(reader_on_cpu=True)
    assert not scalar_constant(clone, "meta", {"c_lifted"})


def test_a_chain_of_cpu_scalars_ending_in_cpu_work_or_an_output_stays_in_pytorch():
    """clone -> mul(clone, 3) -> add with a full CPU tensor: the scalar made from the first one
    is read on the CPU, so neither moves; nor does a scalar the program returns."""
    from ember._importer import scalar_constant

    g = torch.fx.Graph()
    const, x, other = g.placeholder("c_lifted"), g.placeholder("x"), g.placeholder("cpu_x")
    clone = g.call_function(torch.ops.aten.clone.default, (const,))
    fill = g.call_function(torch.ops.aten.fill.Tensor, (x, clone))
    tripled = g.call_function(torch.ops.aten.mul.Tensor, (clone, 3))
    add = g.call_function(torch.ops.aten.add.Tensor, (other, tripled))
    g.output((fill, add))
    const.meta["val"] = clone.meta["val"] = tripled.meta["val"] = torch.tensor(3.0)
    x.meta["val"] = fill.meta["val"] = torch.empty(4, device="meta")
    other.meta["val"] = add.meta["val"] = torch.empty(4)
    assert not scalar_constant(clone, "meta", {"c_lifted"})
    g.erase_node(g.output_node())
    g.output(fill)
    g.erase_node(add)
    assert scalar_constant(clone, "meta", {"c_lifted"})  # the chain now ends in nothing
    g.erase_node(g.output_node())
    g.output((fill, tripled))
    assert not scalar_constant(clone, "meta", {"c_lifted"})  # tripled is an output


def test_swin_mask_fills_stay_in_the_engine_of_a_cuda_program():
    """torchvision's Swin-T exported for CUDA (fake tensors: no GPU needed) imports with no node
    left to PyTorch; under the old device rule its mask fills' lifted 0-dim CPU constants made
    18 nodes of this tiny version (290 of the full model on an H100) run in PyTorch."""
    tv = pytest.importorskip("torchvision")
    from torch._subclasses.fake_tensor import FakeTensorMode

    import ember._importer as importer

    with FakeTensorMode(), torch.device("cuda"):
        model = tv.models.swin_transformer.SwinTransformer(
            patch_size=[4, 4], embed_dim=32, depths=[2], num_heads=[2], window_size=[4, 4],
            num_classes=10).eval()
        ep = torch.export.export(model, (torch.randn(1, 3, 32, 32),))
    ep = ep.run_decompositions()
    # Real host tensors for the weights and constants (the importer copies their bytes); the
    # graph's fake CUDA values still say where each node runs.
    for store in (ep.state_dict, ep.constants):
        for name, value in list(store.items()):
            store[name] = torch.zeros(value.shape, dtype=value.dtype)
    imported = importer.import_program(ep, {}, "cuda")
    assert imported.outside == [], imported.outside
    mask_scalars = [n for n in ep.graph.nodes if n.op == "call_function"
                    and isinstance(n.meta.get("val"), torch.Tensor)
                    and n.meta["val"].dim() == 0 and n.meta["val"].device.type == "cpu"]
    assert mask_scalars, "the export no longer makes CPU scalars: this test checks nothing"

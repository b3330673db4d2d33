"""Extending Ember from Python (docs/extending.md): converters written in Python, FX lowering
passes, module substitution, and the hand-written attention rewrite, on the CPU back end."""

import json
import math

import pytest
import torch

import ember
from converters.harness import compile_cpu
from ember import _C, extending
from converters.harness import assert_close


# ---------------------------------------------------------------------------------------------
# A custom op Ember has no converter for: y = clamp(x * alpha, -limit, limit)

@torch.library.custom_op("ember_test::scaled_clamp", mutates_args=())
def scaled_clamp(x: torch.Tensor, alpha: float, *, limit: float = 1.0) -> torch.Tensor:
    return torch.clamp(x * alpha, -limit, limit)


@scaled_clamp.register_fake
def _(x, alpha, *, limit=1.0):
    return torch.empty_like(x)


OP = torch.ops.ember_test.scaled_clamp.default
E = extending.ElementWiseOp


def convert_scaled_clamp(ctx, node, args, kwargs, name):
    x, alpha = args
    limit = kwargs["limit"]
    scaled = ctx.net.add_elementwise(x, ctx.scalar(alpha, x.dtype, x.rank), E.PROD,
                                     name + "/scale").output()
    hi = ctx.net.add_elementwise(scaled, ctx.scalar(limit, x.dtype, x.rank), E.MIN).output()
    return ctx.net.add_elementwise(hi, ctx.scalar(-limit, x.dtype, x.rank), E.MAX).output()


class AroundCustom(torch.nn.Module):
    """Linear layers on both sides of the custom op: one engine when the op converts."""

    def __init__(self, alpha=0.5, limit=0.75):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.alpha, self.limit = alpha, limit

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.ops.ember_test.scaled_clamp(y, self.alpha, limit=self.limit)
        return torch.relu(self.b(y)) * 2.0


def segments(report):
    """(engine segments, PyTorch segments) from the partition report's first line."""
    first = report.partition_report.splitlines()[0]
    inner = first[first.index("(") + 1:first.index(")")]
    engine, pytorch = (int(p.split()[0]) for p in inner.split(","))
    return engine, pytorch


@pytest.fixture
def clean_registry():
    """Every Python converter and FX pass a test registers is removed afterwards."""
    before = set(extending._registered)
    passes = extending.lowering_passes()
    yield
    for key, label in set(extending._registered) - before:
        _C.remove_converter(key, label)
        del extending._registered[(key, label)]
    for p in extending.lowering_passes():
        if p not in passes:
            extending.remove_lowering_pass(p)


def test_without_a_converter_the_custom_op_splits_the_graph(clean_registry):
    model, x = AroundCustom(), torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert segments(report) == (2, 1), report.partition_report
    assert_close(gm(x), model(x))


def test_python_converter_keeps_one_engine(clean_registry):
    ember.dynamo.converter(OP)(convert_scaled_clamp)
    model, x = AroundCustom(), torch.randn(4, 8) * 3
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert segments(report) == (1, 0), report.partition_report
    assert "Nodes run in PyTorch" not in report.partition_report
    assert_close(gm(x), model(x))
    # Listed with Ember's own converters, under its Python name.
    entries = [e for e in _C.converter_entries() if e["op"] == "ember_test::scaled_clamp"]
    assert [e["file"] for e in entries] == [
        "python:test_extending.convert_scaled_clamp"]
    from ember import coverage
    assert coverage.coverage()["python_converters"] == [
        {"op": "ember_test::scaled_clamp", "converter": "test_extending.convert_scaled_clamp",
         "priority": 0, "supports_dynamic": True}]


def test_python_converter_with_dynamic_batch(clean_registry):
    ember.dynamo.converter(OP)(convert_scaled_clamp)
    model = AroundCustom()
    inp = ember.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(16, 8))
    gm = ember.compile(model.eval(), inputs=[inp], device="cpu", min_block_size=1)
    for n in (1, 5, 16):
        x = torch.randn(n, 8) * 3
        assert_close(gm(x), model(x))


def test_registration_by_packet_and_bad_targets(clean_registry):
    ember.dynamo.converter(torch.ops.ember_test.scaled_clamp)(convert_scaled_clamp)
    assert [e["op"] for e in _C.converter_entries()
            if e["file"].endswith(".convert_scaled_clamp")] == ["ember_test::scaled_clamp"]
    assert extending.remove_converter(OP) == 1
    with pytest.raises(TypeError, match="not an op"):
        ember.dynamo.converter(42)
    with pytest.raises(TypeError, match="not callable"):
        ember.dynamo.converter(OP)("not a function")


def test_torch_executed_ops_still_excludes_a_python_converter(clean_registry):
    ember.dynamo.converter(OP)(convert_scaled_clamp)
    model, x = AroundCustom(), torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1,
                             torch_executed_ops=["ember_test::scaled_clamp"])
    assert segments(report) == (2, 1), report.partition_report
    assert "in torch_executed_ops" in report.partition_report
    assert_close(gm(x), model(x))


def test_priority_over_a_builtin_converter(clean_registry):
    calls = []

    def my_relu(ctx, node, args, kwargs, name):
        calls.append(node.name)
        return ctx.net.add_activation(args[0], extending.ActivationType.RELU, name=name).output()

    model, x = AroundCustom(), torch.randn(4, 8)
    ember.dynamo.converter(torch.ops.aten.relu.default, priority=-1)(my_relu)
    compile_cpu(model, [x], min_block_size=1)
    assert calls == []  # below the built-in: never asked
    extending.remove_converter(torch.ops.aten.relu.default, my_relu)

    ember.dynamo.converter(torch.ops.aten.relu.default, priority=1)(my_relu)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert sorted(calls) == ["relu", "relu_1"]
    assert_close(gm(x), model(x))


def test_validator_rejects_a_variant_that_then_falls_back(clean_registry):
    def positive_alpha(node):
        alpha = node.args[1]
        return True if alpha > 0 else f"alpha {alpha} <= 0 is not supported"

    ember.dynamo.converter(OP, capability_validator=positive_alpha)(convert_scaled_clamp)
    x = torch.randn(4, 8)
    _, report = compile_cpu(AroundCustom(alpha=0.5), [x], min_block_size=1)
    assert segments(report) == (1, 0), report.partition_report
    model = AroundCustom(alpha=-0.5)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert segments(report) == (2, 1), report.partition_report
    assert "alpha -0.5 <= 0 is not supported" in report.partition_report
    assert_close(gm(x), model(x))


def test_validator_sees_shapes_and_dtypes(clean_registry):
    seen = []

    def record(node):
        x = node.args[0]
        seen.append((node.op, x.dtype, x.shape, node.outputs[0].shape))
        return False

    ember.dynamo.converter(OP, capability_validator=record)(convert_scaled_clamp)
    compile_cpu(AroundCustom(), [torch.randn(4, 8)], min_block_size=1)
    assert ("ember_test::scaled_clamp", "f32", [4, 8], [4, 8]) in seen


def test_static_only_converter_declines_dynamic_nodes(clean_registry):
    ember.dynamo.converter(OP, supports_dynamic_shapes=False)(convert_scaled_clamp)
    model = AroundCustom()
    inp = ember.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(16, 8))
    report = ember.dynamo.CompilationReport()
    ep = ember.dynamo.trace(model.eval(), [inp])
    gm = ember.dynamo.compile(ep, [inp], device="cpu", report=report, min_block_size=1)
    assert "static shapes only" in report.partition_report
    x = torch.randn(3, 8)
    assert_close(gm(x), model(x))


def test_a_converter_that_raises_sends_its_node_to_pytorch(clean_registry):
    def broken(ctx, node, args, kwargs, name):
        raise ValueError("no kernel for this alpha")

    ember.dynamo.converter(OP)(broken)
    model, x = AroundCustom(), torch.randn(4, 8) * 3
    with pytest.warns(UserWarning, match="no kernel for this alpha") as rec:
        gm, report = compile_cpu(model, [x], min_block_size=1)
    message = next(str(w.message) for w in rec if "no kernel" in str(w.message))
    assert "scaled_clamp" in message and ".<locals>.broken" in message
    # That node alone runs in PyTorch, with the converter's message; the rest is rebuilt.
    assert segments(report) == (2, 1), report.partition_report
    assert "converter failed" in report.partition_report
    assert "no kernel for this alpha" in report.partition_report
    assert not report.build_failures
    assert_close(gm(x), model(x))

    with pytest.raises(_C.ConversionError, match=r"<locals>\.broken") as err:
        compile_cpu(model, [x], min_block_size=1, pass_through_build_failures=True)
    assert err.value.node == "scaled_clamp"
    assert "no kernel for this alpha" in str(err.value)


def test_a_converter_returning_the_wrong_thing_is_named(clean_registry):
    ember.dynamo.converter(OP)(lambda ctx, node, args, kwargs, name: 3)
    model, x = AroundCustom(), torch.randn(4, 8)
    with pytest.raises(_C.ConversionError, match="return an engine tensor"):
        compile_cpu(model, [x], min_block_size=1, pass_through_build_failures=True)


def test_network_api_errors_name_the_layer_and_parameter(clean_registry):
    def bad_params(ctx, node, args, kwargs, name):
        return ctx.net.add_layer("SoftMax", [args[0]], axes=1).output()

    ember.dynamo.converter(OP)(bad_params)
    with pytest.raises(_C.ConversionError, match="SoftMax has no parameter 'axes'.*axis"):
        compile_cpu(AroundCustom(), [torch.randn(4, 8)], min_block_size=1,
                    pass_through_build_failures=True)


def test_generic_add_layer_constants_and_helpers(clean_registry):
    """A converter using add_layer by kind name, a constant from a tensor, cast and broadcast:
    y = softmax(x * w, dim=-1) with the softmax in f16, cast back to f32."""
    w = torch.linspace(-1, 1, 8)

    def via_layers(ctx, node, args, kwargs, name):
        x = args[0]
        assert x.shape == [4, 8] and x.dtype == "f32" and x.rank == 2
        wc, xx = ctx.broadcast(ctx.constant(w), x)
        assert wc.shape == [1, 8]
        prod = ctx.net.add_elementwise(xx, wc, E.PROD).output()
        sm = ctx.net.add_layer("SoftMax", [ctx.cast(prod, torch.float16)], axis=1,
                               name=name).output()
        assert sm.dtype == "f16"
        return ctx.cast(sm, "f32")

    ember.dynamo.converter(OP)(via_layers)
    model, x = AroundCustom(), torch.randn(4, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert segments(report) == (1, 0), report.partition_report

    def expected(x):
        y = torch.relu(model.a(x))
        y = torch.softmax((y * w).half(), dim=-1).float()
        return torch.relu(model.b(y)) * 2.0

    out = gm(x)
    torch.testing.assert_close(out, expected(x), atol=2e-2, rtol=2e-2)  # the f16 tolerance


# ---------------------------------------------------------------------------------------------
# FX lowering passes

class SiluWrittenOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x)
        return y * torch.sigmoid(y)


def test_lowering_pass_rewrites_the_fx_graph(clean_registry):
    rewrites = []

    @ember.dynamo.lowering_pass
    def silu_from_sigmoid(gm: torch.fx.GraphModule) -> None:
        aten = torch.ops.aten
        for node in list(gm.graph.nodes):
            if node.target != aten.mul.Tensor:
                continue
            a, b = node.args
            for x, s in ((a, b), (b, a)):
                if (isinstance(s, torch.fx.Node) and s.target == aten.sigmoid.default
                        and s.args[0] is x):
                    with gm.graph.inserting_before(node):
                        silu = gm.graph.call_function(aten.silu.default, (x,))
                    node.replace_all_uses_with(silu)
                    gm.graph.erase_node(node)
                    rewrites.append(silu.name)
                    break

    model, x = SiluWrittenOut(), torch.randn(3, 8)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert len(rewrites) == 1
    assert any(line.startswith("test_extending.test_lowering_pass_rewrites_the_fx_graph"
                               ".<locals>.silu_from_sigmoid: ") for line in report.lowering_log)
    assert_close(gm(x), model(x))


def test_a_failing_lowering_pass_is_named(clean_registry):
    @ember.dynamo.lowering_pass
    def broken_pass(gm):
        raise KeyError("oops")

    with pytest.raises(RuntimeError, match="lowering pass .*broken_pass failed: KeyError"):
        compile_cpu(SiluWrittenOut(), [torch.randn(2, 8)])


# ---------------------------------------------------------------------------------------------
# Module substitution

class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(dim) + 0.5)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class WithNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.norm1 = RMSNorm(16)
        self.norm2 = RMSNorm(16, eps=1e-3)

    def forward(self, x):
        return self.norm2(torch.relu(self.norm1(self.lin(x))))


def build_rmsnorm(ctx, module, inputs, params, name):
    (x,) = inputs
    net, r = ctx.net, inputs[0].rank
    sq = net.add_elementwise(x, x, E.PROD).output()
    mean = net.add_reduce(sq, extending.ReduceOp.AVG, [r - 1], True).output()
    eps = ctx.scalar(module.eps, x.dtype, r)
    inv = net.add_unary(net.add_elementwise(mean, eps, E.SUM).output(),
                        extending.UnaryOp.RSQRT).output()
    y = net.add_elementwise(x, inv, E.PROD).output()
    return net.add_elementwise(y, ctx.broadcast_rank(params["weight"], r), E.PROD,
                               name).output()


def test_substitute_a_user_block_through_a_custom_op(clean_registry):
    calls = []

    def replacement(ctx, module, inputs, params, name):
        calls.append(module.eps)
        return build_rmsnorm(ctx, module, inputs, params, name)

    op = ember.dynamo.substitute(RMSNorm, replacement)
    try:
        model, x = WithNorms().eval(), torch.randn(5, 16)
        expected = model(x)
        report = ember.dynamo.CompilationReport()
        ep = ember.dynamo.trace(model, [x])
        ops = [n.target for n in ep.graph.nodes if n.op == "call_function"]
        assert ops.count(op) == 2
        # The model itself is untouched after export.
        assert isinstance(model.norm1, RMSNorm) and isinstance(model.norm2, RMSNorm)
        gm = ember.dynamo.compile(ep, [x], device="cpu", report=report, min_block_size=1)
        assert segments(report) == (1, 0), report.partition_report
        assert sorted(calls) == [1e-6, 1e-3]
        assert_close(gm(x), expected)
        # The op's eager implementation is the module's own math (fallback stays correct).
        gm2 = ember.dynamo.compile(ember.dynamo.trace(model, [x]), [x], device="cpu",
                                   min_block_size=1, torch_executed_ops=[op.name().replace(
                                       ".default", "")])
        assert_close(gm2(x), expected)
    finally:
        extending.remove_substitution(RMSNorm)


def test_substitute_by_qualified_name_and_path(clean_registry):
    extending.substitute("norm2", build_rmsnorm, name="only_norm2")
    try:
        model, x = WithNorms().eval(), torch.randn(2, 16)
        ep = ember.dynamo.trace(model, [x])
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert sum("ember_sub.only_norm2" in t for t in targets) == 1
        gm = ember.compile(model, inputs=[x], device="cpu", min_block_size=1)
        assert_close(gm(x), model(x))
    finally:
        extending.remove_substitution("norm2")


def test_substitute_rejects_bad_targets():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        ember.dynamo.substitute(int, build_rmsnorm)
    with pytest.raises(TypeError, match="converter function"):
        ember.dynamo.substitute(RMSNorm, None)


# ---------------------------------------------------------------------------------------------
# The attention rewrite (compiler lowering pass recognize_attention)

def _heads(x, h=4):
    b, n, d = x.shape
    return x.view(b, n, h, d // h).transpose(1, 2)


class BertSelfAttention(torch.nn.Module):
    """BERT's eager attention: scale after the first matmul, additive padding mask, dropout."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))
        self.h, self.dropout = h, torch.nn.Dropout(0.1)

    def forward(self, x, mask):
        q, k, v = _heads(self.q(x), self.h), _heads(self.k(x), self.h), _heads(self.v(x), self.h)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        s = s + mask
        p = self.dropout(torch.nn.functional.softmax(s, dim=-1))
        out = torch.matmul(p, v)
        return out.transpose(1, 2).reshape(x.shape)


class Gpt2Attention(torch.nn.Module):
    """GPT-2's eager attention: divide by a torch.full scale, causal mask through torch.where."""

    def __init__(self, d=32, h=4, n=8):
        super().__init__()
        self.c_attn = torch.nn.Linear(d, 3 * d)
        self.h = h
        self.register_buffer("bias", torch.tril(torch.ones(n, n, dtype=torch.bool)).view(
            1, 1, n, n), persistent=False)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        q, k, v = _heads(q, self.h), _heads(k, self.h), _heads(v, self.h)
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype)
        n = q.size(-2)
        causal = self.bias[:, :, :n, :n]
        w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        w = torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, v).transpose(1, 2).reshape(x.shape)


class T5Attention(torch.nn.Module):
    """T5-style: no scale in T5 itself (here: the query scaled before the matmul), a learned
    position bias added, softmax in float then type_as."""

    def __init__(self, d=32, h=4, n=8):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=False) for _ in range(3))
        self.h = h
        self.position_bias = torch.nn.Parameter(torch.randn(1, h, n, n))

    def forward(self, x):
        q, k, v = _heads(self.q(x), self.h), _heads(self.k(x), self.h), _heads(self.v(x), self.h)
        scores = torch.matmul(q * 0.125, k.transpose(3, 2))
        scores += self.position_bias
        w = torch.nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        return torch.matmul(w, v).transpose(1, 2).reshape(x.shape)


class MaskedFillAttention(torch.nn.Module):
    """The classic hand-written form: scores.masked_fill(pad, -inf) over padded keys."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))
        self.h = h

    def forward(self, x, pad):
        q, k, v = _heads(self.q(x), self.h), _heads(self.k(x), self.h), _heads(self.v(x), self.h)
        s = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(x.shape)


class SwinShiftedWindowAttention(torch.nn.Module):
    """torchvision's shifted-window attention scores: the query scaled, a relative position
    bias [H, L, L], and the shift mask [W, L, L] added through a 5-d view of the scores."""

    def __init__(self, d=32, h=4, windows=2, n=8):
        super().__init__()
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.h, self.windows = h, windows
        self.position_bias = torch.nn.Parameter(torch.randn(h, n, n))
        mask = torch.zeros(windows, n, n)
        mask[1, :, n // 2:] = -100.0  # the second window's keys from the other region
        self.register_buffer("mask", mask)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * (d // self.h) ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
        attn = attn + self.position_bias
        attn = attn.view(b // self.windows, self.windows, self.h, n, n)
        attn = attn + self.mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.h, n, n)
        attn = torch.nn.functional.softmax(attn, dim=-1)
        return attn.matmul(v).transpose(1, 2).reshape(b, n, d)


class MaskBeforeScale(torch.nn.Module):
    """A near miss: the mask is added before the scale, so it is scaled too (not SDPA)."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.q = torch.nn.Linear(d, d)
        self.h = h

    def forward(self, x, mask):
        q = _heads(self.q(x), self.h)
        s = (torch.matmul(q, q.transpose(-1, -2)) + mask) / 4.0
        return torch.matmul(torch.softmax(s, dim=-1), q).transpose(1, 2).reshape(x.shape)


def _rewrites(report):
    return sum(int(line.split()[2]) for line in report.lowering_log
               if line.startswith("recognize_attention:"))


@pytest.mark.parametrize("case", ["bert", "gpt2", "t5", "masked_fill", "swin"])
def test_hand_written_attention_becomes_one_attention_node(case):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    if case == "bert":
        model = BertSelfAttention().eval()
        mask = torch.zeros(2, 1, 1, 8)
        mask[1, ..., 6:] = torch.finfo(torch.float32).min  # padding of the second sequence
        inputs = [x, mask]
    elif case == "gpt2":
        model, inputs = Gpt2Attention().eval(), [x]
    elif case == "masked_fill":
        pad = torch.zeros(2, 8, dtype=torch.bool)
        pad[1, 5:] = True
        model, inputs = MaskedFillAttention().eval(), [x, pad]
    elif case == "swin":  # 2 images of 2 windows each
        model, inputs = SwinShiftedWindowAttention().eval(), [torch.randn(4, 8, 32)]
    else:
        model, inputs = T5Attention().eval(), [x]
    gm, report = compile_cpu(model, inputs, min_block_size=1)
    assert _rewrites(report) == 1, report.lowering_log
    assert segments(report) == (1, 0), report.partition_report
    assert_close(gm(*inputs), model(*inputs))


def test_attention_rewrite_with_dynamic_batch():
    model = BertSelfAttention().eval()
    x = ember.Input(min_shape=(1, 8, 32), opt_shape=(2, 8, 32), max_shape=(4, 8, 32))
    m = torch.zeros(1, 1, 1, 8)  # one padding mask for the whole batch
    report = ember.dynamo.CompilationReport()
    ep = ember.dynamo.trace(model, [x, m])
    gm = ember.dynamo.compile(ep, [x, m], device="cpu", report=report, min_block_size=1)
    assert _rewrites(report) == 1, report.lowering_log
    for b in (1, 3):
        xs, ms = torch.randn(b, 8, 32), torch.zeros(1, 1, 1, 8)
        ms[..., 7:] = torch.finfo(torch.float32).min
        assert_close(gm(xs, ms), model(xs, ms))


class AddedBoolMask(BertSelfAttention):
    """A near miss: a bool mask added to the scores adds 0 or 1 (PyTorch promotes it), which
    SDPA would read as keys to keep."""

    def forward(self, x, mask):
        q, k, v = _heads(self.q(x), self.h), _heads(self.k(x), self.h), _heads(self.v(x), self.h)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1)) + mask
        return torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("case", ["mask_before_scale", "added_bool_mask"])
def test_attention_near_miss_is_not_rewritten(case):
    x = torch.randn(2, 8, 32)
    if case == "mask_before_scale":
        model, mask = MaskBeforeScale().eval(), torch.randn(2, 1, 1, 8)
    else:
        model, mask = AddedBoolMask().eval(), torch.rand(2, 1, 1, 8) > 0.5
    gm, report = compile_cpu(model, [x, mask], min_block_size=1)
    assert _rewrites(report) == 0, report.lowering_log
    assert_close(gm(x, mask), model(x, mask))


@pytest.mark.parametrize("name, attention_layers", [
    ("BertModel (eager attention)", 2), ("GPT2Model (eager attention)", 2),
    ("T5EncoderModel (eager attention)", 2), ("T5 decoder stack (eager attention)", 4),
    ("LlamaModel (eager attention)", 2)])
def test_hugging_face_eager_attention_is_rewritten(name, attention_layers):
    """The transformers models of the zoo with attn_implementation="eager": every attention
    becomes one node (T5's decoder: self- and cross-attention per layer)."""
    pytest.importorskip("transformers")
    from torch.utils._pytree import tree_leaves
    from zoo import hf

    model, inputs = hf.ENTRIES[name].make()
    gm, report = compile_cpu(model, list(inputs))
    assert _rewrites(report) == attention_layers, report.lowering_log
    assert segments(report) == (1, 0), report.partition_report
    got = [t for t in tree_leaves(gm(*inputs)) if isinstance(t, torch.Tensor)]
    want = [t for t in tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]
    assert_close(got, want)


def test_gpt2_eager_causal_mask_becomes_the_causal_flag():
    """GPT-2's eager attention masks with torch.finfo(dtype).min, not -inf: after the rewrite
    the builder still reads that constant mask as "causal" (exact: every row keeps its diagonal
    key), so the engine is the one the SDPA form gives: causal Attention layers, no mask read.
    (No attention_mask input here: a padding mask is data and stays a mask.)"""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    engines = {}
    for attn in ("eager", "sdpa"):
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                      n_positions=64, use_cache=False)
        model = transformers.AutoModel.from_config(cfg, attn_implementation=attn).eval()
        ids = torch.randint(0, 128, (2, 16))
        gm, _ = compile_cpu(model, [ids])
        engine = next(getattr(gm, n) for n in dir(gm) if n.startswith("_ember_engine_"))
        layers = json.loads(engine.inspect())["layers"]
        engines[attn] = [(layer["type"], layer["params"].get("causal"), len(layer["inputs"]))
                         for layer in layers if layer["type"] == "Attention"]
        assert_close(gm(ids).last_hidden_state, model(ids).last_hidden_state)
    assert engines["eager"] == engines["sdpa"] == [("Attention", True, 3)] * 2, engines


class HalfEagerAttention(torch.nn.Module):
    """Llama's eager path on an f16 model: softmax in f32 and back, causal additive mask."""

    def __init__(self, d=32, h=4, n=8):
        super().__init__()
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.h = h
        mask = torch.full((n, n), torch.finfo(torch.float16).min).triu(1)
        self.register_buffer("mask", mask.view(1, 1, n, n), persistent=False)

    def forward(self, x):
        q, k, v = (_heads(t, self.h) for t in self.qkv(x).split(x.shape[-1], dim=2))
        w = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5) + self.mask
        w = torch.nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v).transpose(1, 2).reshape(x.shape)


def test_f16_attention_with_softmax_in_f32_is_rewritten():
    torch.manual_seed(0)
    model = HalfEagerAttention().eval().half()
    x = torch.randn(2, 8, 32, dtype=torch.float16)
    gm, report = compile_cpu(model, [x], min_block_size=1)
    assert _rewrites(report) == 1, report.lowering_log
    assert_close(gm(x), model(x))

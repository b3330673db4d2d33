"""Real models through the dynamo path on the CPU back end (random weights, small inputs):
every node in engines, outputs matching eager."""

import pytest
import torch

import ember

torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def flat_outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = out.to_tuple() if hasattr(out, "to_tuple") else tuple(out.values())
    result = []
    for o in out:
        result += flat_outputs(o) if o is not None else []
    return result


def check_model(model, inputs, *, dynamic=None, extra=(), **settings):
    model = model.eval()
    report = ember.dynamo.CompilationReport()
    specs = dynamic if dynamic is not None else list(inputs)
    gm = ember.compile(model, inputs=specs, device="cpu", report=report,
                       require_full_compilation=True, **settings)
    assert not report.fallback, str(report)
    assert len(report.engines) == 1, str(report)
    for args in (tuple(inputs), *extra):
        with torch.no_grad():
            expected = flat_outputs(model(*args))
            actual = flat_outputs(gm(*args))
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape
            assert cosine(a, e) > 0.9999
            torch.testing.assert_close(a, e, atol=1e-3, rtol=1e-3)
    return gm, report


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_torchvision(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    check_model(model, [torch.randn(2, 3, 64, 64)])


def test_resnet18_dynamic_batch():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    spec = ember.Input(min_shape=(1, 3, 64, 64), opt_shape=(2, 3, 64, 64), max_shape=(4, 3, 64, 64))
    check_model(model, [torch.randn(2, 3, 64, 64)], dynamic=[spec],
                extra=[(torch.randn(1, 3, 64, 64),), (torch.randn(4, 3, 64, 64),)])


def test_resnet18_channels_last():
    # The channels_last pass forced on for the CPU back end (normally CUDA f16/bf16 only): every
    # convolution and pooling in NHWC, one transpose in, the pooled features out by a reshape.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    _, report = check_model(model, [torch.randn(2, 3, 64, 64)], channels_last=True)
    log = [line for line in report.engines[0]["build_log"] if line.startswith("channels_last")]
    assert log and log[0].startswith("channels_last: 20 convolutions, 2 poolings"), log
    assert "1 transposes in, 1 out" in log[0], log


def small_bert():
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg)


def small_gpt2():
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  use_cache=False)
    return transformers.GPT2Model(cfg)


@pytest.mark.parametrize("make", [small_bert, small_gpt2], ids=["bert", "gpt2"])
def test_transformers(make):
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 128, (2, 16))
    check_model(model, [ids])


@pytest.mark.parametrize("make", [small_bert, small_gpt2], ids=["bert", "gpt2"])
def test_transformers_dynamic_sequence(make):
    torch.manual_seed(0)
    model = make()
    spec = ember.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(4, 32), dtype=torch.int64)
    check_model(model, [torch.randint(0, 128, (2, 16))], dynamic=[spec],
                extra=[(torch.randint(0, 128, (1, 5)),), (torch.randint(0, 128, (4, 32)),)])

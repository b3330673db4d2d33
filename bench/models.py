"""The benchmark's models: every one built from a config with random weights (the GPU machine has
no network), at the benchmark's size or at a tiny size for the CPU tests.

    from models import MODELS, make
    model, inputs = make("t5_small", batch=1)              # benchmark shapes
    model, inputs = make("qwen2_0_5b", batch=2, tiny=True)  # 2 layers, hidden 64: CI

`make` returns the model in eval mode (f32, on the current default device, prepared as `prepare`
says) and a tuple of example inputs; the model is called as `model(*inputs)`. Every model
returns a tensor, a tuple or an HF ModelOutput whose first tensor is the one the benchmark
compares with eager f32.

`tiny=True` keeps each model's structure (the same layer kinds, attention variants, position
encodings and wrappers), with fewer and narrower layers and smaller images and sequences, so
tests/python/test_bench_models.py can check on the CPU in seconds that Ember compiles each one
with zero fallback nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Model:
    """One benchmark model: what it covers, its serving batch and how to build it."""

    name: str
    #: what users run that this model stands for (the benchmark's coverage argument)
    covers: str
    #: the serving batch of the wide suite (batch 1 is the other row)
    serving_batch: int
    build: Callable[[int, bool], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]


# ---- vision (torchvision; weights=None everywhere)

def _tv():
    import torchvision
    return torchvision.models


def _image(batch: int, size: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, size, size),)


def _tiny_vision(ctor: str) -> torch.nn.Module:
    """The CI version of a torchvision model: its own classes and block kinds (bottlenecks with
    downsampling, inverted residuals with squeeze-excite, ConvNeXt blocks with layer scale,
    shifted-window attention with relative bias, dilated ResNet + ASPP), fewer and narrower."""
    tv = _tv()
    if ctor == "resnet50":
        return tv.resnet.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=16,
                                num_classes=100)
    if ctor == "mobilenet_v3_large":
        c = tv.mobilenetv3.InvertedResidualConfig
        # (in, kernel, expanded, out, squeeze-excite, activation, stride, dilation, width)
        setting = [c(16, 3, 16, 16, False, "RE", 1, 1, 1.0),
                   c(16, 3, 64, 24, False, "RE", 2, 1, 1.0),
                   c(24, 5, 72, 40, True, "RE", 2, 1, 1.0),
                   c(40, 3, 240, 80, False, "HS", 2, 1, 1.0),
                   c(80, 3, 480, 112, True, "HS", 1, 1, 1.0),
                   c(112, 5, 672, 160, True, "HS", 2, 1, 1.0)]
        return tv.mobilenetv3.MobileNetV3(setting, last_channel=256, num_classes=100)
    if ctor == "efficientnet_b0":
        c = tv.efficientnet.MBConvConfig
        setting = [c(1, 3, 1, 32, 16, 1), c(6, 3, 2, 16, 24, 2), c(6, 5, 2, 24, 40, 1),
                   c(6, 3, 2, 40, 80, 1)]
        return tv.efficientnet.EfficientNet(setting, dropout=0.2, num_classes=100)
    if ctor == "convnext_tiny":
        c = tv.convnext.CNBlockConfig
        return tv.convnext.ConvNeXt([c(32, 64, 2), c(64, None, 1)], num_classes=100)
    if ctor == "swin_t":
        return tv.swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                                   num_heads=[2, 4], window_size=[4, 4],
                                                   num_classes=100)
    if ctor == "vit_b_16":
        return tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                    hidden_dim=64, mlp_dim=128, num_classes=100)
    raise ValueError(f"no tiny version of '{ctor}'")


def _classifier(ctor: str):
    def build(batch: int, tiny: bool):
        if tiny:
            return _tiny_vision(ctor), _image(batch, 32)
        return getattr(_tv(), ctor)(weights=None), _image(batch, 224)
    return build


class _SegmentationOut(torch.nn.Module):
    """torchvision's segmentation models return {"out": ...}: the benchmark compares "out"."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _deeplabv3_resnet50(batch: int, tiny: bool):
    from torchvision.models import segmentation
    if not tiny:
        model = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                aux_loss=False, num_classes=21)
        # 512x512: the usual evaluation crop (PASCAL VOC / Cityscapes-style inference).
        return _SegmentationOut(model), _image(batch, 512)
    # deeplabv3_resnet50's structure: a ResNet with layers 3 and 4 dilated instead of strided
    # (output stride 8), the ASPP head (atrous 3x3 convs, a global-pooling branch upsampled
    # back) and a bilinear upsampling to the input size; one block per stage, ASPP 32 wide.
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
    tv = _tv()
    backbone = tv.resnet.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=16,
                                replace_stride_with_dilation=[False, True, True])
    head = torch.nn.Sequential(ASPP(2048, [12, 24, 36], out_channels=32),
                               torch.nn.Conv2d(32, 32, 3, padding=1, bias=False),
                               torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 21, 1))
    model = DeepLabV3(IntermediateLayerGetter(backbone, {"layer4": "out"}), head)
    return _SegmentationOut(model), _image(batch, 32)


# ---- transformers (random weights from configs)

def _transformers():
    import transformers
    return transformers


class _Call(torch.nn.Module):
    """Calls an HF model with its positional inputs as the keyword arguments `names` (and
    `fixed` keyword arguments), so torch.export sees plain tensors in a fixed order."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], **fixed):
        super().__init__()
        self.model = model
        self.names = names
        self.fixed = fixed

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)), **self.fixed)


def _ids(batch: int, seq: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, seq))


def _seq(tiny: bool) -> int:
    return 16 if tiny else 128


def _bert(batch: int, tiny: bool):
    t = _transformers()
    cfg = (t.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64) if tiny
           else t.BertConfig())
    return t.BertModel(cfg), (_ids(batch, _seq(tiny), cfg.vocab_size),)


def _roberta(batch: int, tiny: bool):
    t = _transformers()
    # RoBERTa-base: BERT's encoder with position ids offset past the padding id (computed from
    # input_ids in the graph: a cumsum over the non-padding mask) and no token types.
    kw = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
              bos_token_id=0, eos_token_id=2)
    if tiny:
        kw.update(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=66)
    cfg = t.RobertaConfig(**kw)
    return t.RobertaModel(cfg, add_pooling_layer=False), (_ids(batch, _seq(tiny), cfg.vocab_size),)


def _distilbert(batch: int, tiny: bool):
    t = _transformers()
    cfg = (t.DistilBertConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                              max_position_embeddings=64) if tiny else t.DistilBertConfig())
    return t.DistilBertModel(cfg), (_ids(batch, _seq(tiny), cfg.vocab_size),)


def _gpt2(batch: int, tiny: bool):
    t = _transformers()
    kw = dict(use_cache=False)
    if tiny:
        kw.update(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    cfg = t.GPT2Config(**kw)
    return t.GPT2Model(cfg), (_ids(batch, _seq(tiny), cfg.vocab_size),)


def _t5_small(batch: int, tiny: bool):
    """T5-small's encoder and decoder in one forward (no generation): encoder over 128 tokens,
    decoder over 32 given decoder_input_ids, relative position bias, cross-attention."""
    t = _transformers()
    kw = dict(use_cache=False)  # T5Config() is t5-small: d_model 512, 6 + 6 layers, 8 heads
    if tiny:
        kw.update(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, relative_attention_max_distance=32)
    cfg = t.T5Config(**kw)
    model = _Call(t.T5Model(cfg), ("input_ids", "decoder_input_ids"), use_cache=False)
    dec = 8 if tiny else 32
    return model, (_ids(batch, _seq(tiny), cfg.vocab_size), _ids(batch, dec, cfg.vocab_size))


def qwen2_config(tiny: bool = False):
    """Qwen2.5-0.5B's geometry: hidden 896, 24 layers, 14 query heads and 2 key/value heads
    (grouped-query attention, head dim 64), intermediate 4864, vocabulary 151936."""
    t = _transformers()
    kw = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              tie_word_embeddings=True, use_cache=False)
    if tiny:
        kw.update(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return t.Qwen2Config(**kw)


def _qwen2_0_5b(batch: int, tiny: bool):
    """A decoder with grouped-query attention, RoPE, RMSNorm, SwiGLU and biased q/k/v
    projections at Qwen2.5-0.5B's shapes (`qwen2_config`), without the LM head and without a KV
    cache (one prefill forward)."""
    cfg = qwen2_config(tiny)
    model = _Call(_transformers().Qwen2Model(cfg), ("input_ids",), use_cache=False)
    return model, (_ids(batch, _seq(tiny), cfg.vocab_size),)


MODELS: dict[str, Model] = {m.name: m for m in [
    Model("resnet50", "classic convnet (ResNet)", 32, _classifier("resnet50")),
    Model("mobilenet_v3_large", "depthwise convs, squeeze-excite, hardswish", 32,
          _classifier("mobilenet_v3_large")),
    Model("efficientnet_b0", "depthwise convs, squeeze-excite, SiLU", 32,
          _classifier("efficientnet_b0")),
    Model("convnext_tiny", "modern convnet: 7x7 depthwise, layer norm, GELU", 32,
          _classifier("convnext_tiny")),
    Model("vit_b_16", "vision transformer", 32, _classifier("vit_b_16")),
    Model("swin_t", "windowed vision transformer (shifted windows, relative bias)", 32,
          _classifier("swin_t")),
    Model("deeplabv3_resnet50", "semantic segmentation (dilated convs, ASPP, upsampling)", 8,
          _deeplabv3_resnet50),
    Model("bert", "encoder-only transformer (BERT-base)", 32, _bert),
    Model("roberta", "encoder-only transformer (RoBERTa-base: position ids from the padding mask)",
          32, _roberta),
    Model("distilbert", "encoder-only transformer (DistilBERT: 6 layers)", 32, _distilbert),
    Model("t5_small", "encoder-decoder transformer (T5-small, relative position bias)", 32,
          _t5_small),
    Model("gpt2", "decoder (GPT-2 small, causal)", 32, _gpt2),
    Model("qwen2_0_5b", "decoder with grouped-query attention and RoPE (Qwen2.5-0.5B shapes)", 32,
          _qwen2_0_5b),
]}

#: The wide suite (issue 18, section 3): every model above, at batch 1 and its serving batch.
WIDE = tuple(MODELS)


def make(name: str, batch: int, tiny: bool = False):
    """(model in eval mode, example inputs) for `name` at `batch`; seeded, so every call gives
    the same weights and inputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    if batch < 1:
        raise ValueError(f"model '{name}': batch must be at least 1, got {batch}")
    torch.manual_seed(0)
    model, inputs = MODELS[name].build(batch, tiny)
    device = torch.empty(0).device  # the default device (`with torch.device("cuda"):`)
    inputs = tuple(x.to(device) for x in inputs)
    return prepare(model.to(device), inputs), inputs


@torch.no_grad()
def prepare(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """Makes a randomly initialized model a fair accuracy subject in f16 and bf16: all-zero
    Linear/Conv2d weights (ViT's classifier head) get small random values, and every
    BatchNorm's running stats are set from one random batch.

    With fresh stats (mean 0, var 1) a BatchNorm is an identity and activations shrink layer
    after layer: MobileNetV3's logits come out near 1e-10 and EfficientNet-B0's near 1e-13,
    below f16's smallest normal (6e-5), so f16 would be judged on numbers that underflowed.
    The statistics a training pass gives (per-channel mean and variance) go wrong the other way:
    subtracting the mean of a ReLU's output and dividing by its variance raises the gain of
    every layer by ~1.2 (E[relu(z)^2] / Var[relu(z)] = 0.5 / 0.34), a random network becomes
    chaotic over 50 layers, and eager f16 itself lands at cosine 0.998 (ResNet-50) or 0.99
    (DeepLabV3) against f32. So each BatchNorm here divides by its input's mean square over the
    whole layer, measured in eval mode just before it runs (every layer sees what its
    predecessors now produce), and subtracts nothing: each layer keeps unit scale with gain ~1
    (He init is critical for that), outputs are O(1), and the low-precision error measured is
    the kernels' (eager f16 at cosine 0.99999+ against f32), not the weights' amplification.
    Returns the model in eval mode; deterministic for a given seed."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not torch.any(w):
            torch.nn.init.normal_(w, std=0.02)
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model

    def calibrate(m, args):
        x = args[0].transpose(0, 1).flatten(1)  # (channels, everything else)
        m.running_mean.zero_()
        m.running_var.fill_(x.square().mean().item())

    hooks = [m.register_forward_pre_hook(calibrate) for m in norms]
    try:
        x = inputs[0]
        g = torch.Generator(device=x.device).manual_seed(2)
        model(torch.randn((max(4, x.shape[0]), *x.shape[1:]), generator=g, device=x.device))
    finally:
        for h in hooks:
            h.remove()
    return model

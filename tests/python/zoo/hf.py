"""The Hugging Face transformers part of the model zoo: small configs, random weights, eval mode.

Each entry builds a model and example inputs; `run(entry)` exports it, compiles it through Ember
on the CPU back end and compares every output tensor with eager PyTorch (f32):

    from zoo import hf
    result = hf.run(hf.ENTRIES["BertModel"])   # {"model", "compiled", "engines", "fallback", ...}

tests/python/test_zoo_hf.py runs the table; tools/zoo.py builds docs/zoo.md from `run`'s results.
Models take their inputs positionally through `_Call` (argument names -> the model's keyword
arguments), so torch.export and the compiled program see plain tensors in a fixed order.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

import ember
from zoo.common import (  # noqa: F401 (re-exported)
    DEVICE, cosine, fallback_lines, flat_outputs, to_device)

class _Call(torch.nn.Module):
    """Calls `model` with its positional arguments passed as the keyword arguments `names`."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], **fixed: Any):
        super().__init__()
        self.model = model
        self.names = names
        self.fixed = fixed

    def forward(self, *args: torch.Tensor):
        return self.model(**dict(zip(self.names, args)), **self.fixed)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One zoo model: `make()` returns (model, example inputs). `dynamic` gives torch.export
    dynamic_shapes for the inputs (one dict or None per input) and `extra` makes more input
    tuples inside those ranges; `attention` is the transformers attn_implementation."""

    name: str
    make: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]
    attention: str = "sdpa"
    dynamic: Callable[[], tuple[Any, ...]] | None = None
    extra: Callable[[], list[tuple[torch.Tensor, ...]]] | None = None
    #: "op: reason" strings of nodes expected to run in PyTorch (empty: everything in engines).
    expected_fallback: tuple[str, ...] = ()


def _transformers():
    import transformers
    return transformers


def _ids(batch: int, seq: int, vocab: int = 128) -> torch.Tensor:
    # Ids 3.. keep clear of the pad/bos/eos ids the configs below use.
    return torch.randint(3, vocab, (batch, seq))


def _padding_mask(batch: int, seq: int, left: bool = False) -> torch.Tensor:
    """All ones except the last row, whose last third is padding (first third with `left`:
    decoder-only models pad on the left for generation, so early queries see only padding)."""
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if left:
        mask[-1, :seq // 3] = 0
    else:
        mask[-1, (2 * seq) // 3:] = 0
    return mask


# ---- constructors: every model small (hidden 64, 2 layers, 4 heads), seeded, in eval mode

#: Weight init std for models whose config has one. The default (0.02) gives attention scores
#: near 0, so attention is nearly uniform (ViT's and Whisper's exactly, to 3 digits) and a wrong
#: softmax scale, mask or position bias would barely show; 1/sqrt(hidden) makes scores O(1).
#: T5 scales its own init by d_model and already attends selectively.
_INIT = 64 ** -0.5

def bert(attention: str):
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=64, initializer_range=_INIT,
                           attn_implementation=attention)
        model = _Call(t.BertModel(cfg), ("input_ids", "attention_mask", "token_type_ids"))
        return model, (_ids(2, 16), _padding_mask(2, 16), torch.randint(0, 2, (2, 16)))
    return make


def gpt2(attention: str):
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=1, eos_token_id=2, initializer_range=_INIT,
                           use_cache=False, attn_implementation=attention)
        model = _Call(t.GPT2Model(cfg), ("input_ids", "attention_mask"), use_cache=False)
        return model, (_ids(2, 16), _padding_mask(2, 16, left=True))
    return make


def _t5_config(attention: str, **kw):
    return _transformers().T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                    num_heads=4, relative_attention_num_buckets=8,
                                    relative_attention_max_distance=32, use_cache=False,
                                    attn_implementation=attention, **kw)


def t5_encoder(attention: str):
    def make():
        t = _transformers()
        torch.manual_seed(0)
        model = _Call(t.T5EncoderModel(_t5_config(attention)), ("input_ids", "attention_mask"))
        return model, (_ids(2, 16), _padding_mask(2, 16))
    return make


def t5_decoder(attention: str):
    """T5's decoder stack (causal self-attention with relative position bias, cross-attention
    over encoder_hidden_states), T5 v1.1's gated-GELU feed-forward."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = _t5_config(attention, feed_forward_proj="gated-gelu")
        decoder = t.T5Model(cfg).decoder
        model = _Call(decoder, ("input_ids", "encoder_hidden_states", "encoder_attention_mask"),
                      use_cache=False)
        return model, (_ids(2, 8), torch.randn(2, 16, 64), _padding_mask(2, 16))
    return make


def vit(attention: str):
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, image_size=32, patch_size=8,
                          initializer_range=_INIT, attn_implementation=attention)
        return _Call(t.ViTModel(cfg), ("pixel_values",)), (torch.randn(2, 3, 32, 32),)
    return make


def llama(attention: str):
    """Grouped-query attention (4 query heads, 2 key/value heads), RoPE, RMSNorm, SwiGLU."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                            initializer_range=_INIT, use_cache=False, attn_implementation=attention)
        model = _Call(t.LlamaModel(cfg), ("input_ids", "attention_mask"), use_cache=False)
        return model, (_ids(2, 16), _padding_mask(2, 16, left=True))
    return make


def whisper_encoder(attention: str):
    """WhisperModel's encoder on log-mel input_features (16 bins, 2 * max_source_positions
    frames, as Whisper requires)."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.WhisperConfig(vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4,
                              encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                              max_source_positions=32, max_target_positions=32, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                              init_std=_INIT, use_cache=False, attn_implementation=attention)
        encoder = t.WhisperModel(cfg).encoder
        return _Call(encoder, ("input_features",)), (torch.randn(2, 16, 64),)
    return make


def qwen2(attention: str):
    """Qwen2: Llama's structure (GQA: 4 query heads, 2 key/value heads; RoPE, RMSNorm, SwiGLU)
    with biased q/k/v projections."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                            initializer_range=_INIT, use_cache=False,
                            attn_implementation=attention)
        model = _Call(t.Qwen2Model(cfg), ("input_ids", "attention_mask"), use_cache=False)
        return model, (_ids(2, 16), _padding_mask(2, 16, left=True))
    return make


def roberta(attention: str):
    """RoBERTa: BERT's encoder with position ids computed from input_ids (a cumsum over the
    non-padding tokens, offset past pad_token_id=1); the padded row has real pad ids."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.RobertaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128,
                              max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, initializer_range=_INIT,
                              attn_implementation=attention)
        ids, mask = _ids(2, 16), _padding_mask(2, 16)
        ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
        return _Call(t.RobertaModel(cfg), ("input_ids", "attention_mask")), (ids, mask)
    return make


def distilbert(attention: str):
    def make():
        t = _transformers()
        torch.manual_seed(0)
        cfg = t.DistilBertConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                 max_position_embeddings=64, initializer_range=_INIT,
                                 attn_implementation=attention)
        model = _Call(t.DistilBertModel(cfg), ("input_ids", "attention_mask"))
        return model, (_ids(2, 16), _padding_mask(2, 16))
    return make


def t5_encoder_decoder(attention: str):
    """T5Model: encoder and decoder in one forward on given decoder_input_ids (no generation),
    with the encoder's padding mask."""
    def make():
        t = _transformers()
        torch.manual_seed(0)
        model = _Call(t.T5Model(_t5_config(attention)),
                      ("input_ids", "attention_mask", "decoder_input_ids"), use_cache=False)
        return model, (_ids(2, 16), _padding_mask(2, 16), _ids(2, 8))
    return make


def _seq_dynamic(n_inputs: int, lo: int = 2, hi: int = 32):
    """Batch and sequence length dynamic on `n_inputs` (batch, seq) inputs."""
    def dynamic():
        b = torch.export.Dim("batch", min=1, max=4)
        s = torch.export.Dim("seq", min=lo, max=hi)
        return tuple({0: b, 1: s} for _ in range(n_inputs))
    return dynamic


def _t5_encoder_extra():
    torch.manual_seed(1)
    return [(_ids(1, 5), _padding_mask(1, 5)), (_ids(4, 32), _padding_mask(4, 32))]


def _bert_extra():
    torch.manual_seed(1)
    return [(_ids(1, 3), _padding_mask(1, 3), torch.randint(0, 2, (1, 3))),
            (_ids(4, 32), _padding_mask(4, 32), torch.randint(0, 2, (4, 32)))]


def _batch_dynamic(n_inputs: int):
    def dynamic():
        b = torch.export.Dim("batch", min=1, max=4)
        return tuple({0: b} for _ in range(n_inputs))
    return dynamic


def _llama_extra():
    torch.manual_seed(1)
    return [(_ids(1, 16), _padding_mask(1, 16, left=True)),
            (_ids(4, 16), _padding_mask(4, 16, left=True))]


def _t5_decoder_dynamic():
    return ({1: torch.export.Dim("target", min=2, max=32)}, None, None)


def _t5_decoder_extra():
    torch.manual_seed(1)
    return [(_ids(2, 3), torch.randn(2, 16, 64), _padding_mask(2, 16)),
            (_ids(2, 32), torch.randn(2, 16, 64), _padding_mask(2, 16))]


def _with_hidden_states_and_attentions(make):
    def wrapped():
        model, inputs = make()
        model.fixed = dict(model.fixed, output_hidden_states=True, output_attentions=True)
        return model, inputs
    return wrapped


def _whisper_extra():
    torch.manual_seed(1)
    return [(torch.randn(1, 16, 64),), (torch.randn(4, 16, 64),)]


def _table() -> dict[str, Entry]:
    entries = []
    for attention in ("sdpa", "eager"):
        suffix = "" if attention == "sdpa" else " (eager attention)"
        entries += [
            Entry("BertModel" + suffix, bert(attention), attention),
            Entry("GPT2Model" + suffix, gpt2(attention), attention),
            Entry("T5EncoderModel" + suffix, t5_encoder(attention), attention),
            Entry("T5 decoder stack" + suffix, t5_decoder(attention), attention),
            Entry("ViTModel" + suffix, vit(attention), attention),
            Entry("LlamaModel" + suffix, llama(attention), attention),
            Entry("Whisper encoder" + suffix, whisper_encoder(attention), attention),
            Entry("Qwen2Model" + suffix, qwen2(attention), attention),
            Entry("RobertaModel" + suffix, roberta(attention), attention),
            Entry("DistilBertModel" + suffix, distilbert(attention), attention),
            Entry("T5Model (encoder-decoder)" + suffix, t5_encoder_decoder(attention), attention),
        ]
    entries += [
        Entry("BertModel (dynamic batch, sequence)", bert("sdpa"), "sdpa",
              dynamic=_seq_dynamic(3, lo=3), extra=_bert_extra),
        Entry("T5EncoderModel (dynamic batch, sequence)", t5_encoder("sdpa"), "sdpa",
              dynamic=_seq_dynamic(2, lo=3), extra=_t5_encoder_extra),
        Entry("Whisper encoder (dynamic batch)", whisper_encoder("sdpa"), "sdpa",
              dynamic=_batch_dynamic(1), extra=_whisper_extra),
        # Sequence length dynamic too fails in torch.export itself (a guard Min(16*s, 32*s) ==
        # 16*s from _prims_common.check_contiguous_sizes_strides that it cannot prove).
        Entry("LlamaModel (dynamic batch)", llama("sdpa"), "sdpa",
              dynamic=_batch_dynamic(2), extra=_llama_extra),
        Entry("T5 decoder stack (dynamic target length)", t5_decoder("sdpa"), "sdpa",
              dynamic=_t5_decoder_dynamic, extra=_t5_decoder_extra),
        # Every layer's hidden state and attention map as engine outputs (7 outputs).
        Entry("BertModel (hidden states, attentions)",
              _with_hidden_states_and_attentions(bert("eager")), "eager"),
    ]
    return {e.name: e for e in entries}


#: name -> Entry; insertion order is the order of docs/zoo.md.
ENTRIES: dict[str, Entry] = _table()


# ---- running an entry

def run(entry: Entry) -> dict:
    """Exports `entry`'s model, compiles it on the CPU back end (fallback allowed) and compares
    each output tensor with eager f32 on the example inputs and, for dynamic entries, the extra
    inputs. Returns {"model", "compiled", "engines", "fallback", "cosine", "max_error",
    "compile_seconds"}: cosine is the smallest and max_error the largest over every output."""
    model, inputs = entry.make()
    model, inputs = to_device(model.eval(), inputs)
    result = {"model": entry.name, "compiled": False, "engines": 0, "fallback": [],
              "cosine": None, "max_error": None, "compile_seconds": None}
    dynamic = entry.dynamic() if entry.dynamic else None
    try:
        with torch.no_grad():
            ep = torch.export.export(model, inputs, dynamic_shapes=(dynamic,) if dynamic else None)
        report = ember.dynamo.CompilationReport()
        start = time.perf_counter()
        compiled = ember.dynamo.compile(ep, list(inputs), device=DEVICE, report=report)
        result["compile_seconds"] = round(time.perf_counter() - start, 3)
    except Exception as e:  # noqa: BLE001 - a zoo row records why a model does not compile
        result["fallback"] = [f"compile: {type(e).__name__}: {e}"]
        return result
    result["compiled"] = True
    result["engines"] = len(report.engines)
    result["fallback"] = fallback_lines(report)

    cosines, errors = [], []
    extra = [to_device(model, tuple(a))[1] for a in (entry.extra() if entry.extra else [])]
    for args in [inputs, *extra]:
        with torch.no_grad():
            expected = flat_outputs(model(*args))
            actual = flat_outputs(compiled(*args))
        if len(actual) != len(expected):
            raise AssertionError(f"{entry.name}: {len(actual)} outputs, eager has {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            if a.shape != e.shape or a.dtype != e.dtype:
                raise AssertionError(f"{entry.name}: output {i} is {a.dtype}{tuple(a.shape)}, "
                                     f"eager gives {e.dtype}{tuple(e.shape)}")
            cosines.append(cosine(a, e))
            errors.append((a.double() - e.double()).abs().max().item() if a.numel() else 0.0)
    result["cosine"] = min(cosines)
    result["max_error"] = max(errors)
    return result

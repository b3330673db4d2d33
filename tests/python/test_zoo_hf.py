"""The transformers model zoo (tests/python/zoo/hf.py) through Ember on the CPU back end: every
node in engines (or exactly the fallback an entry declares, each with its reason), every output
tensor close to eager f32."""

import pytest
import torch

pytest.importorskip("transformers")

from zoo import hf  # noqa: E402

#: Every output's cosine similarity with eager f32 must exceed this...
MIN_COSINE = 0.9999
#: ...and its largest |compiled - eager| stay within this (outputs are O(1): the models end in a
#: layer norm; f32 rounding over 2 layers gives ~1e-6).
MAX_ERROR = 1e-4


@pytest.mark.parametrize("name", list(hf.ENTRIES))
def test_zoo_hf(name):
    entry = hf.ENTRIES[name]
    if hf.DEVICE == "cuda" and name == "BertModel (dynamic batch, sequence)":
        # torch.export itself fails here on CUDA: HF's SDPA path adds a guard on the sequence
        # length (mask padding to a multiple of 8) that the dynamic range 3..32 violates.
        pytest.xfail("torch.export on CUDA rejects the dynamic sequence range (HF SDPA guard)")
    row = hf.run(entry)
    assert set(row) == {"model", "compiled", "engines", "fallback", "cosine", "max_error",
                        "compile_seconds"}
    assert row["compiled"], f"{name} did not compile: {row['fallback']}"
    assert sorted(row["fallback"]) == sorted(entry.expected_fallback), (
        f"{name}: nodes left to PyTorch differ from the expected ones:\n" +
        "\n".join(row["fallback"]))
    assert row["engines"] == 1, f"{name}: {row['engines']} engines"
    assert row["cosine"] > MIN_COSINE, f"{name}: cosine {row['cosine']}"
    assert row["max_error"] <= MAX_ERROR, f"{name}: max |error| {row['max_error']}"


def test_fallback_lines_list_every_fallback_node_and_one_line_per_failed_build():
    report = hf.ember.dynamo.CompilationReport()
    report.skipped = [("a", "aten::_assert_tensor_metadata", "its result is not a tensor"),
                      ("b", "aten::sym_size.int", "its result is not a tensor"),
                      ("c", "aten::item", "its result is not a tensor")]
    report.fallback = [("d", "aten::nonzero", "data-dependent output shape"),
                       ("c", "aten::item", "not imported (aten::item): its result is not a tensor"),
                       ("e", "aten::add.Tensor", "engine segment 1 failed to build: out of memory"),
                       ("f", "aten::mul.Tensor", "engine segment 1 failed to build: out of memory")]
    report.build_failures = [(1, "out of memory")]
    assert hf.fallback_lines(report) == [
        "aten::nonzero: data-dependent output shape",
        "aten::item: not imported (aten::item): its result is not a tensor",
        "engine segment 1: build failed: out of memory"]


def test_run_reports_a_model_that_does_not_compile():
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x + 1
            return x - 1

    entry = hf.Entry("bad", lambda: (Bad(), (torch.randn(2, 3),)))
    row = hf.run(entry)
    assert row["compiled"] is False and row["engines"] == 0 and row["cosine"] is None
    assert len(row["fallback"]) == 1 and row["fallback"][0].startswith("compile: ")

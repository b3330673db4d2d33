"""The vision zoo (tests/python/zoo/vision.py): each torchvision model compiles through Ember on
the CPU back end with only its expected fallbacks, and matches eager f32 on every output."""

import pytest

pytest.importorskip("torchvision")

from zoo import vision  # noqa: E402


@pytest.mark.parametrize("name", list(vision.ENTRIES))
def test_vision_model(name):
    entry = vision.ENTRIES[name]
    row, scale = vision.evaluate(entry)
    assert row["compiled"], f"{name} did not compile: {row['fallback']}"
    assert row["engines"] >= 1, f"{name}: no engine was built"
    assert sorted(row["fallback"]) == sorted(entry.expected_fallback), (
        f"{name}: nodes left to PyTorch differ from the expected ones:\n  "
        + "\n  ".join(row["fallback"]))
    assert row["cosine"] is not None, f"{name}: outputs differ in shape: {row['fallback']}"
    assert row["cosine"] > vision.MIN_COSINE, f"{name}: cosine {row['cosine']}"
    assert row["max_error"] <= vision.MAX_ERROR * max(1.0, scale), (
        f"{name}: max |error| {row['max_error']} with outputs up to {scale}")


def test_prepare_gives_meaningful_outputs():
    """The premise of the zoo's checks: after `prepare`, outputs are O(1), not ~0 (fresh
    BatchNorm stats) or exactly 0 (ViT's zero-initialized head)."""
    import torch
    for name in ("mobilenet_v3_large", "vit_b_16"):
        entry = vision.ENTRIES[name]
        torch.manual_seed(0)
        inputs = entry.inputs()
        model = vision.prepare(entry.make(), inputs)
        with torch.no_grad():
            out = vision.flat_outputs(model(*inputs))[0]
        assert 0.01 < out.std().item() < 100, f"{name}: output std {out.std().item()}"


def test_cosine_of_tiny_outputs():
    """Random-init models can output ~1e-13; torch's cosine_similarity would call a perfect
    match of such values ~0 (its eps clamp), the zoo's cosine must not."""
    import torch
    e = torch.randn(100, dtype=torch.float64) * 1e-13
    assert vision.cosine(e, e) > 1 - 1e-12
    assert vision.cosine(e, -e) < -1 + 1e-12
    assert vision.cosine(torch.zeros(3), torch.zeros(3)) == 1.0
    assert vision.cosine(torch.zeros(3), torch.ones(3)) == 0.0

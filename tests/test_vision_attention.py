"""The batched vision attention (axolotl_qwenvl_plugin/vision_attention.py) against transformers'
own per-window forward, on the tiny Qwen2.5-VL's vision tower (one windowed, one full block)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLForConditionalGeneration

from axolotl_qwenvl_plugin.vision_attention import batch_vision_attention, chunked_attention, vision_attention_modules

# (t, h, w) in 14-px patches; windows are 8x8 patches (112 px).
EVEN = [[1, 16, 16], [1, 8, 24]]  # every window full: one chunk length per windowed block
MIXED = [[1, 16, 20], [2, 12, 12], [1, 6, 10]]  # partial windows at the edges, a 2-step video, a small image


def _tiny_model(tiny_model_dir, attn="sdpa"):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                               attn_implementation=attn)  # fmt: skip
    return model.train()


def _pixels(grid, seed=0):
    patches = sum(t * h * w for t, h, w in grid)
    return torch.randn(patches, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed))


def _count_sdpa(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def _vision_pass(model, grid):
    """Vision tower output and the gradient of its first block's qkv weight."""
    model.zero_grad(set_to_none=True)
    visual = model.model.visual
    out = visual(_pixels(grid), grid_thw=torch.tensor(grid)).pooler_output
    out.square().mean().backward()
    return out.detach(), visual.blocks[0].attn.qkv.weight.grad.clone()


@pytest.mark.parametrize("grid", [EVEN, MIXED], ids=["full-windows", "partial-windows"])
def test_batched_vision_attention_matches_transformers(tiny_model_dir, grid, monkeypatch):
    model = _tiny_model(tiny_model_dir)
    calls = _count_sdpa(monkeypatch)
    expected_out, expected_grad = _vision_pass(model, grid)
    per_window_calls = len(calls)

    assert batch_vision_attention(model) == len(model.model.visual.blocks)
    calls.clear()
    out, grad = _vision_pass(model, grid)

    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    # one call per distinct chunk length and block instead of one per window / image
    assert len(calls) < per_window_calls / 2, (len(calls), per_window_calls)


def test_calls_per_block_follow_distinct_chunk_lengths(tiny_model_dir, monkeypatch):
    model = _tiny_model(tiny_model_dir)
    batch_vision_attention(model)
    calls = _count_sdpa(monkeypatch)
    _vision_pass(model, EVEN)
    # windowed block: 4 + 3 windows of 64 patches, one call; full block: images of 256 and 192
    # patches, one call each
    assert [tuple(shape) for shape in calls] == [(7, 2, 64, 16), (1, 2, 256, 16), (1, 2, 192, 16)]


def test_chunked_attention_is_attention_within_each_chunk():
    torch.manual_seed(0)
    seq, heads, dim = 11, 2, 4
    q, k, v = (torch.randn(seq, heads, dim) for _ in range(3))
    cu = torch.tensor([0, 3, 6, 7, 11])  # lengths 3, 3, 1, 4
    out = chunked_attention(q, k, v, cu, scale=0.5)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * 0.5
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[start:end])
        torch.testing.assert_close(out[start:end], expected)


def test_other_attention_implementations_are_left_alone(tiny_model_dir):
    model = _tiny_model(tiny_model_dir, attn="eager")
    assert batch_vision_attention(model) == 0
    assert all("forward" not in module.__dict__ for module in vision_attention_modules(model))


def test_patching_twice_changes_nothing_more(tiny_model_dir):
    model = _tiny_model(tiny_model_dir)
    assert batch_vision_attention(model) == 2
    assert batch_vision_attention(model) == 0

"""Qwen2.5-VL's vision attention in a few batched calls instead of one call per window.

Without flash-attn (the usual case: it is not a dependency of Axolotl, Unsloth or this plugin),
transformers' `Qwen2_5_VLVisionAttention` splits the patch sequence at `cu_seqlens` and runs
`scaled_dot_product_attention` once per chunk: once per 112x112-pixel window in 28 of the 32
blocks, once per image or video frame group in the other 4. A 672x672 image has 36 windows, so a
batch of 16 such images launches ~16,000 tiny attention calls per forward. On an H100 that host
work leaves the GPU idle for about half of a 7B step (torch.profiler, benchmarks/results/).

Chunks of equal length are independent attentions of the same shape, so they can run as one
batched call: the patches of every chunk of length L are gathered into a (chunks, heads, L, dim)
batch (a plain view when all chunks have one length, as for images whose sides are multiples of
112 px), attended in one call, and written back in place. Same inputs, same maths, per chunk; the
tests compare outputs and gradients with transformers' own forward.

`batch_vision_attention(model)` swaps the forward of each vision attention module of a model
whose vision tower uses `sdpa` (the default). Other implementations are left alone: flash
attention already runs all chunks in one varlen call, and `eager` is an explicit choice.
"""

from __future__ import annotations

import sys
import types
from functools import lru_cache

import torch
import torch.nn.functional as F

ATTENTION_CLASS = "Qwen2_5_VLVisionAttention"


@lru_cache(maxsize=64)
def _chunk_groups(lengths: tuple[int, ...]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(length, starts of the chunks of that length) for each distinct chunk length."""
    starts: dict[int, list[int]] = {}
    offset = 0
    for length in lengths:
        if length:
            starts.setdefault(length, []).append(offset)
        offset += length
    return tuple((length, tuple(chunk_starts)) for length, chunk_starts in starts.items())


def _positions(length: int, starts: tuple[int, ...], device) -> torch.Tensor:
    """Sequence positions of the chunks, chunk after chunk: (len(starts) * length,)."""
    base = torch.tensor(starts, dtype=torch.long).unsqueeze(1) + torch.arange(length).unsqueeze(0)
    return base.reshape(-1).to(device, non_blocking=True)


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                      scale: float) -> torch.Tensor:  # fmt: skip
    """Attention within each chunk [cu_seqlens[i], cu_seqlens[i+1]) of (seq, heads, dim) tensors,
    one batched call per distinct chunk length. Returns (seq, heads, dim)."""
    seq, heads, dim = query.shape
    lengths = tuple((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())  # one host sync, as transformers does
    groups = _chunk_groups(lengths)

    def attend(q, k, v, chunks, length):  # (chunks * length, heads, dim) each -> the same shape
        q, k, v = (t.reshape(chunks, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (chunks, heads, length, dim)
        return out.transpose(1, 2).reshape(chunks * length, heads, dim)

    if len(groups) == 1:  # every chunk has one length: the batch is a view of the sequence
        length, starts = groups[0]
        return attend(query, key, value, len(starts), length)
    positions, outputs = [], []
    for length, starts in groups:
        where = _positions(length, starts, query.device)
        q, k, v = (t.index_select(0, where) for t in (query, key, value))
        positions.append(where)
        outputs.append(attend(q, k, v, len(starts), length))
    # every position is in exactly one group: one scatter writes the whole output
    return query.new_empty(seq, heads, dim).index_copy(0, torch.cat(positions), torch.cat(outputs))


def batched_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                    max_seqlen: int | None = None, **kwargs) -> torch.Tensor:  # fmt: skip
    """`Qwen2_5_VLVisionAttention.forward` (transformers 5.17) with `chunked_attention` in place
    of the per-chunk loop."""
    seq_length = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    rotary = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision  # Unsloth may patch it
    query, key = rotary(query, key, cos, sin)
    out = chunked_attention(query, key, value, cu_seqlens, self.scaling)  # (seq, heads, dim)
    return self.proj(out.reshape(seq_length, -1))


def vision_attention_modules(model) -> list:
    return [m for m in model.modules() if type(m).__name__ == ATTENTION_CLASS]


def batch_vision_attention(model) -> int:
    """Give every sdpa vision attention module of `model` the batched forward; returns how many
    modules changed (0 when the tower uses another attention implementation)."""
    changed = 0
    for module in vision_attention_modules(model):
        if getattr(module.config, "_attn_implementation", None) != "sdpa":
            continue
        if getattr(module.forward, "__func__", None) is batched_forward:
            continue
        module.forward = types.MethodType(batched_forward, module)
        changed += 1
    return changed

"""Analytic training FLOPs of Qwen2.5-VL (LLM + ViT), for MFU against a measured bf16 peak.

    from benchmarks.flops import batch_flops, flops_from_batch, mfu
    count = batch_flops(config, seq_lens=[2654], grids=[(1, 32, 32), (8, 24, 24)])
    count.train_model / 2654          # model FLOPs per LLM token of one LoRA training step
    mfu(count.train_model * steps / seconds, peak_flops_per_s)

    python benchmarks/flops.py --size 3b --seq 2654 --image 448x448 --video 16x336x336

What is counted
---------------
Only matmul FLOPs (2*m*n*k per product): every `nn.Linear`, the ViT's `Conv3d` patch embedding
(a matmul over 3*2*14*14 inputs per patch), the attention score (QK^T) and value (PV) products,
and lm_head. Norms, activations, RoPE, softmax, residual adds, LoRA dropout/scaling and the
4-bit dequantisation are elementwise and left out (< 1 % here). Biases are left out too (as
`torch.utils.flop_counter` does for `addmm`).

* LLM, per decoder layer and token: q/o (d x d), k/v (d x kv_heads*head_dim, GQA), gate/up/down
  (d x intermediate); attention over each sequence of `seq_lens`: 4 * d * pairs, where pairs is
  S*(S+1)/2 with `causal=True` (the k <= q half a causal FlashAttention kernel computes, the
  default) or S*S with `causal=False` (the full square: what eager/SDPA attention with a mask
  computes, and what the PaLM MFU formula 6N + 12*L*H*Q*T assumes). lm_head (d x vocab) runs
  over every token (HF computes logits for all positions when training).
* ViT, per patch (`t*h*w` patches for a grid row (t, h, w)): patch_embed, per block qkv
  (C x 3C), proj (C x C) and the gated MLP gate/up/down (C x intermediate, Qwen2.5-VL's ViT uses
  SwiGLU), attention 4 * C * pairs (non-causal), then the merger on t*h*w/4 tokens:
  (4C x 4C) and (4C x out_hidden). The attention segments follow
  `transformers.vision_utils`: full-attention blocks (`fullatt_block_indexes`) attend within each
  frame-group (`t` segments of h*w patches per grid row, `get_vision_cu_seqlens`); the other
  blocks attend within windows of `window_size` px = window_size/14/2 merged tokens a side
  (112 px -> 4x4 merged = 8x8 = 64 patches), per frame, the edge windows smaller
  (`get_vision_window_index`).

Training
--------
The base weights of the LLM are frozen (LoRA / QLoRA); LoRA adapters of rank `lora_rank` sit on
the `lora_targets` linears of every decoder layer (and on `vision_lora_targets` of every ViT
block). Autograd then computes, per matmul:

* an input gradient (1x its forward) wherever its input requires grad, i.e. wherever a trainable
  parameter lies upstream: through every decoder layer, but not into the first layer's frozen
  q/k/v projections, and not through the ViT unless something in it is trainable;
* a weight gradient (1x) only for trainable weights: LoRA A and B, plus the whole ViT with
  `vision_trainable=True` or the merger with `merger_trainable=True`;
* the attention core's backward: dP, dV, dQ, dK, each half the core's forward.

`train_model` = forward + that backward: the "model FLOPs" of the PaLM MFU definition (the work
the maths needs, whatever the implementation does). `train_hardware` adds what the executed
graph does on top:

* `recompute`: gradient checkpointing re-runs the forward of every checkpointed layer (HF
  checkpoints each decoder layer and each ViT block, not patch_embed, merger or lm_head), only for
  the layers backward reaches; torch's non-reentrant checkpoint (the default of transformers and
  Axolotl) stops once the last saved tensor is rebuilt, so it skips each block's final down_proj
  (its lora_B when down_proj carries LoRA) - `reentrant=True` re-runs whole blocks;
* `attn_bwd_recompute`: fused attention kernels (FlashAttention, SDPA flash/efficient) recompute
  QK^T in backward (+0.5x the core's forward; `torch.utils.flop_counter` counts it too);
* `bwd_unneeded`: input gradients that nothing needs. `PreTrainedModel.enable_input_require_grads`
  (called by Axolotl's `load_adapter` for every adapter, and by transformers'
  `gradient_checkpointing_enable` itself) hooks the input embeddings of every `PreTrainedModel`
  inside the model; in transformers 5 that includes the ViT (`_input_embed_layer =
  "patch_embed"`), so a *frozen* ViT still gets a full input-gradient backward (and, with
  checkpointing, a recompute) whose result is discarded; the hook on the token embeddings adds
  the first layer's q/k/v input gradients. `input_require_grads=True` (the default, matching
  Axolotl's transformers path) models that.

tests/test_flops.py checks all of this against `torch.utils.flop_counter.FlopCounterMode` on
real CPU passes (forward; LoRA forward + backward with and without the hooks and checkpointing):
they agree exactly once RoPE's tiny `inv_freq @ positions` matmul is set aside.

MFU = achieved model FLOP/s / peak FLOP/s (`mfu`), with the peak measured by
`benchmarks/bf16_peak.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VIT_LORA_TARGETS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")

__all__ = [
    "LLM_LORA_TARGETS",
    "VIT_LORA_TARGETS",
    "FlopCount",
    "Shapes",
    "batch_flops",
    "flops_from_batch",
    "grid_thw",
    "load_peak",
    "mfu",
    "shapes_from_config",
    "vit_attention_pairs",
]


@dataclass(frozen=True)
class Shapes:
    """The numbers of a Qwen2.5-VL config that the FLOP count needs."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_depth: int
    vision_out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int = 3


def _get(obj, key, default=None):
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def shapes_from_config(config) -> Shapes:
    """`Shapes` from a `Qwen2_5_VLConfig`, its `config.json` as a dict (nested `text_config` or the
    older flat layout), a path to that file or to a model directory, or a `Shapes` (returned)."""
    if isinstance(config, Shapes):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    text = _get(config, "text_config") or config
    vision = _get(config, "vision_config")
    if vision is None:
        raise ValueError("config has no vision_config: not a Qwen2.5-VL config")
    hidden = _get(text, "hidden_size")
    heads = _get(text, "num_attention_heads")
    return Shapes(
        hidden_size=hidden,
        intermediate_size=_get(text, "intermediate_size"),
        num_hidden_layers=_get(text, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=_get(text, "num_key_value_heads") or heads,
        # Qwen2_5_VLAttention uses hidden_size // num_heads whatever head_dim says.
        head_dim=hidden // heads,
        vocab_size=_get(text, "vocab_size"),
        vision_hidden_size=_get(vision, "hidden_size"),
        vision_intermediate_size=_get(vision, "intermediate_size"),
        vision_depth=_get(vision, "depth"),
        vision_out_hidden_size=_get(vision, "out_hidden_size") or hidden,
        fullatt_block_indexes=tuple(_get(vision, "fullatt_block_indexes") or ()),
        window_size=_get(vision, "window_size"),
        patch_size=_get(vision, "patch_size") or 14,
        temporal_patch_size=_get(vision, "temporal_patch_size") or 2,
        spatial_merge_size=_get(vision, "spatial_merge_size") or 2,
        in_channels=_get(vision, "in_channels") or _get(vision, "in_chans") or 3,  # in_chans: Qwen's config.json
    )


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one training step on one batch. Forward fields are parts of `forward`; the
    `*_attn_fwd` and `lm_head_fwd` fields are parts of `llm_fwd` / `vit_fwd`."""

    llm_fwd: int  # decoder layers + lm_head, base weights (no LoRA)
    llm_attn_fwd: int  # of which attention QK^T + PV
    lm_head_fwd: int  # of which lm_head
    vit_fwd: int  # patch_embed + blocks + merger, base weights
    vit_attn_fwd: int  # of which attention QK^T + PV
    lora_fwd: int  # the LoRA A/B matmuls (LLM and ViT)
    bwd_input: int  # activation gradients the trainable parameters need
    bwd_weight: int  # weight gradients of the trainable parameters
    recompute: int  # gradient checkpointing's second forward
    attn_bwd_recompute: int  # QK^T recomputed by fused attention backward kernels
    bwd_unneeded: int  # input gradients nothing needs (enable_input_require_grads)
    llm_tokens: int  # sum(seq_lens)
    vit_patches: int  # sum(t*h*w)
    # the part of llm_fwd/vit_fwd/lora_fwd... per component, for reports
    detail: dict = field(default_factory=dict, compare=False)

    @property
    def forward(self) -> int:
        return self.llm_fwd + self.vit_fwd + self.lora_fwd

    @property
    def backward(self) -> int:
        return self.bwd_input + self.bwd_weight

    @property
    def train_model(self) -> int:
        """Model FLOPs of a training step (PaLM MFU definition): forward + needed backward."""
        return self.forward + self.backward

    @property
    def train_hardware(self) -> int:
        """FLOPs the executed step performs: model FLOPs + recompute + unneeded gradients."""
        return self.train_model + self.recompute + self.attn_bwd_recompute + self.bwd_unneeded

    def per_token(self, value: int | None = None) -> float:
        """`value` (default `train_model`) divided by the LLM tokens."""
        return (self.train_model if value is None else value) / max(self.llm_tokens, 1)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "detail"}
        for name in ("forward", "backward", "train_model", "train_hardware"):
            out[name] = getattr(self, name)
        return out


# --------------------------------------------------------------------------------------------
# attention segments


def _window_sides(n: int, win: int) -> list[int]:
    return [win] * (n // win) + ([n % win] if n % win else [])


def vit_attention_pairs(grids: Iterable[Sequence[int]], shapes: Shapes) -> tuple[int, int]:
    """(query-key pairs of a full-attention block, of a windowed block) summed over `grids`."""
    merge = shapes.spatial_merge_size
    win = shapes.window_size // merge // shapes.patch_size
    full = windowed = 0
    for t, h, w in grids:
        t, h, w = int(t), int(h), int(w)
        full += t * (h * w) ** 2
        per_frame = sum(
            (a * b * merge * merge) ** 2
            for a in _window_sides(h // merge, win)
            for b in _window_sides(w // merge, win)
        )
        windowed += t * per_frame
    return full, windowed


# --------------------------------------------------------------------------------------------
# the tally


@dataclass
class _Tally:
    fwd: int = 0
    attn_fwd: int = 0
    lora_fwd: int = 0
    bwd_input: int = 0
    bwd_weight: int = 0
    attn_bwd_recompute: int = 0
    tail: int = 0  # forward FLOPs at the end of the last block that early-stop recompute skips

    def linear(self, tokens, n_in, n_out, *, live_in, lora=False, rank=0, train_weight=False) -> bool:
        """Count one linear; return whether its output requires grad."""
        f = 2 * tokens * n_in * n_out
        self.fwd += f
        if live_in:
            self.bwd_input += f
        if train_weight:
            self.bwd_weight += f
        if lora:
            a, b = 2 * tokens * n_in * rank, 2 * tokens * rank * n_out
            self.lora_fwd += a + b
            self.bwd_weight += a + b
            self.bwd_input += b  # into A's output
            if live_in:
                self.bwd_input += a
        return bool(live_in or lora or train_weight)

    def attention(self, core, *, q_live, k_live, v_live) -> bool:
        """QK^T + PV (`core` FLOPs, two equal matmuls); backward dP, dV, dQ, dK of core/2 each."""
        self.fwd += core
        self.attn_fwd += core
        half = core // 2
        if q_live or k_live:
            self.bwd_input += half  # dP = dO V^T
            self.attn_bwd_recompute += half  # S = Q K^T again in a fused kernel
        self.bwd_input += half * (int(v_live) + int(q_live) + int(k_live))
        return bool(q_live or k_live or v_live)

    def block(
        self, tokens, d, q_out, kv_out, inter, core, *, live, lora, rank, train, fused_qkv
    ) -> bool:
        """One pre-norm transformer block (attention + gated MLP); return the output's liveness."""
        if fused_qkv:
            q_live = k_live = v_live = self.linear(
                tokens, d, q_out + 2 * kv_out, live_in=live, lora="qkv" in lora, rank=rank, train_weight=train
            )
            out_name = "proj"
        else:
            q_live = self.linear(tokens, d, q_out, live_in=live, lora="q_proj" in lora, rank=rank, train_weight=train)
            k_live = self.linear(tokens, d, kv_out, live_in=live, lora="k_proj" in lora, rank=rank, train_weight=train)
            v_live = self.linear(tokens, d, kv_out, live_in=live, lora="v_proj" in lora, rank=rank, train_weight=train)
            out_name = "o_proj"
        attn_live = self.attention(core, q_live=q_live, k_live=k_live, v_live=v_live)
        o_live = self.linear(tokens, q_out, d, live_in=attn_live, lora=out_name in lora, rank=rank, train_weight=train)
        live = live or o_live
        g = self.linear(tokens, d, inter, live_in=live, lora="gate_proj" in lora, rank=rank, train_weight=train)
        u = self.linear(tokens, d, inter, live_in=live, lora="up_proj" in lora, rank=rank, train_weight=train)
        dn = self.linear(tokens, inter, d, live_in=g or u, lora="down_proj" in lora, rank=rank, train_weight=train)
        # What a non-reentrant checkpoint's recompute skips (it stops once the last tensor
        # backward needs is rebuilt): down_proj's output is not saved, only its LoRA A output is.
        self.tail = 2 * tokens * rank * d if "down_proj" in lora else 2 * tokens * inter * d
        return live or dn


def _llm_pairs(seq_lens: Sequence[int], causal: bool) -> int:
    return sum(s * (s + 1) // 2 if causal else s * s for s in seq_lens)


def _count(
    s: Shapes,
    seq_lens: Sequence[int],
    grids: Sequence[Sequence[int]],
    *,
    rank: int,
    llm_lora: frozenset,
    vit_lora: frozenset,
    vision_trainable: bool,
    merger_trainable: bool,
    causal: bool,
    input_hooks: bool,
    reentrant: bool,
) -> dict:
    """One pass over the graph. `input_hooks`: the token embeddings' and the patch embedding's
    outputs require grad (enable_input_require_grads)."""
    tokens = sum(seq_lens)
    patches = sum(int(t) * int(h) * int(w) for t, h, w in grids)
    merged = patches // (s.spatial_merge_size**2)

    # ---- ViT
    vit = _Tally()
    vit_live = False
    vit_recompute = 0
    if patches:
        C, I = s.vision_hidden_size, s.vision_intermediate_size
        patch_in = s.in_channels * s.temporal_patch_size * s.patch_size**2
        vit_live = vit.linear(patches, patch_in, C, live_in=False, train_weight=vision_trainable) or input_hooks
        full_pairs, win_pairs = vit_attention_pairs(grids, s)
        for i in range(s.vision_depth):
            pairs = full_pairs if i in s.fullatt_block_indexes else win_pairs
            before = vit.fwd + vit.lora_fwd
            vit_live = vit.block(
                patches, C, C, C, I, 4 * C * pairs,
                live=vit_live, lora=vit_lora, rank=rank, train=vision_trainable, fused_qkv=True,
            )
            if vit_live:  # backward reaches this block: checkpointing runs its forward again
                vit_recompute += vit.fwd + vit.lora_fwd - before - (0 if reentrant else vit.tail)
        m_train = vision_trainable or merger_trainable
        # a trained merger trains its ln_q too, so mlp.0's input then requires grad
        h = vit.linear(merged, 4 * C, 4 * C, live_in=vit_live or m_train, train_weight=m_train)
        vit_live = vit.linear(merged, 4 * C, s.vision_out_hidden_size, live_in=h, train_weight=m_train)

    # ---- LLM
    llm = _Tally()
    d = s.hidden_size
    q_out = s.num_attention_heads * s.head_dim
    kv_out = s.num_key_value_heads * s.head_dim
    core = 4 * q_out * _llm_pairs(seq_lens, causal)
    live = input_hooks or vit_live
    llm_recompute = 0
    for _ in range(s.num_hidden_layers):
        before = llm.fwd + llm.lora_fwd
        live = llm.block(
            tokens, d, q_out, kv_out, s.intermediate_size, core,
            live=live, lora=llm_lora, rank=rank, train=False, fused_qkv=False,
        )
        if live:
            llm_recompute += llm.fwd + llm.lora_fwd - before - (0 if reentrant else llm.tail)
    lm_head = 2 * tokens * d * s.vocab_size
    llm.linear(tokens, d, s.vocab_size, live_in=live)
    return dict(
        tokens=tokens,
        patches=patches,
        vit=vit,
        llm=llm,
        lm_head=lm_head,
        llm_recompute=llm_recompute,
        vit_recompute=vit_recompute,
    )


def batch_flops(
    config,
    seq_lens: Sequence[int],
    grids: Sequence[Sequence[int]] = (),
    *,
    lora_rank: int = 16,
    lora_targets: Iterable[str] = LLM_LORA_TARGETS,
    vision_lora_targets: Iterable[str] = (),
    vision_trainable: bool = False,
    merger_trainable: bool = False,
    gradient_checkpointing: bool = True,
    reentrant: bool = False,
    input_require_grads: bool = True,
    causal: bool = True,
) -> FlopCount:
    """FLOPs of one LoRA training step of Qwen2.5-VL on one batch.

    config: a `Qwen2_5_VLConfig`, its config.json dict, a path to it or its model dir, or `Shapes`.
    seq_lens: the LLM length of every attention segment in the batch (text + `<|image_pad|>` /
        `<|video_pad|>` tokens): one per sample unpadded (FlashAttention varlen / packing), or the
        padded length per row to count padding (eager/SDPA over a padded batch).
    grids: every `image_grid_thw` / `video_grid_thw` row (t, h, w) of the batch, in 14 px patches.
    lora_rank / lora_targets: LoRA rank and the decoder-layer linears that carry adapters (leaf
        names from `LLM_LORA_TARGETS`); `vision_lora_targets` the same for every ViT block
        (`VIT_LORA_TARGETS`). An empty `lora_targets` means the LLM is frozen.
    vision_trainable / merger_trainable: the whole ViT (incl. merger), or only the merger
        (`lora_modules_to_save`), is trained in full.
    gradient_checkpointing: checkpointed decoder layers / ViT blocks run their forward twice
        (adds `recompute` to `train_hardware` only). `reentrant=False` (the default of
        transformers and Axolotl, `use_reentrant: false`): torch stops each recompute once the
        last tensor backward needs is rebuilt, so a block's final down_proj (or, with LoRA on it,
        its lora_B) is not re-run; `reentrant=True` (and Unsloth's offloaded checkpointing, which
        re-runs whole layers) recomputes the whole block.
    input_require_grads: `enable_input_require_grads` is on (Axolotl's `load_adapter` always calls
        it): gradients flow into the first layer's q/k/v and through a frozen ViT
        (`bwd_unneeded`, hardware only).
    causal: count the LLM's causal attention as its k <= q half (True) or as the full square.
    """
    s = shapes_from_config(config)
    seq_lens = [int(n) for n in seq_lens]
    grids = [tuple(int(x) for x in g) for g in grids]
    if any(n < 0 for n in seq_lens):
        raise ValueError(f"negative sequence length in {seq_lens}")
    for g in grids:
        if len(g) != 3 or g[1] % s.spatial_merge_size or g[2] % s.spatial_merge_size:
            raise ValueError(f"grid row {g} is not (t, h, w) with h, w multiples of {s.spatial_merge_size}")
    vision_tokens = sum(t * h * w for t, h, w in grids) // s.spatial_merge_size**2
    if sum(seq_lens) < vision_tokens:
        raise ValueError(
            f"seq_lens sum to {sum(seq_lens)} LLM tokens, fewer than the {vision_tokens} vision tokens "
            "the grids put in the LLM: seq_lens must include the image/video pad tokens"
        )
    llm_lora = frozenset(lora_targets)
    vit_lora = frozenset(vision_lora_targets)
    for name, got, allowed in (
        ("lora_targets", llm_lora, LLM_LORA_TARGETS),
        ("vision_lora_targets", vit_lora, VIT_LORA_TARGETS),
    ):
        if got - set(allowed):
            raise ValueError(f"{name}: unknown modules {sorted(got - set(allowed))}; choose from {allowed}")
    common = dict(
        rank=lora_rank if (llm_lora or vit_lora) else 0,
        llm_lora=llm_lora,
        vit_lora=vit_lora,
        vision_trainable=vision_trainable,
        merger_trainable=merger_trainable,
        causal=causal,
        reentrant=reentrant,
    )
    need = _count(s, seq_lens, grids, input_hooks=False, **common)
    run = _count(s, seq_lens, grids, input_hooks=input_require_grads, **common) if input_require_grads else need
    nv, nl, rv, rl = need["vit"], need["llm"], run["vit"], run["llm"]
    bwd_need = nv.bwd_input + nl.bwd_input
    bwd_run = rv.bwd_input + rl.bwd_input
    recompute = (run["llm_recompute"] + run["vit_recompute"]) if gradient_checkpointing else 0
    return FlopCount(
        llm_fwd=nl.fwd,
        llm_attn_fwd=nl.attn_fwd,
        lm_head_fwd=need["lm_head"],
        vit_fwd=nv.fwd,
        vit_attn_fwd=nv.attn_fwd,
        lora_fwd=nv.lora_fwd + nl.lora_fwd,
        bwd_input=bwd_need,
        bwd_weight=nv.bwd_weight + nl.bwd_weight,
        recompute=recompute,
        attn_bwd_recompute=rv.attn_bwd_recompute + rl.attn_bwd_recompute,
        bwd_unneeded=bwd_run - bwd_need,
        llm_tokens=need["tokens"],
        vit_patches=need["patches"],
        detail={
            "llm_bwd_input": nl.bwd_input,
            "vit_bwd_input": nv.bwd_input,
            "llm_lora_fwd": nl.lora_fwd,
            "vit_lora_fwd": nv.lora_fwd,
            "llm_recompute": run["llm_recompute"] if gradient_checkpointing else 0,
            "vit_recompute": run["vit_recompute"] if gradient_checkpointing else 0,
            "vit_bwd_unneeded": rv.bwd_input - nv.bwd_input,
            "llm_bwd_unneeded": rl.bwd_input - nl.bwd_input,
        },
    )


# --------------------------------------------------------------------------------------------
# helpers


def flops_from_batch(config, batch: Mapping, *, count_padding: bool = False, **kwargs) -> FlopCount:
    """`batch_flops` for a collated batch (`input_ids`, `attention_mask`, `image_grid_thw`,
    `video_grid_thw`; tensors or nested lists). Without `count_padding` each row contributes its
    unpadded length, split into packed samples when `attention_mask` holds sample ids 1, 2, ...
    (Axolotl's multipack); with it, each row counts as one sequence of the padded length (what
    eager/SDPA attention computes over a padded batch). `kwargs` go to `batch_flops`."""

    def rows(x):
        return x.tolist() if hasattr(x, "tolist") else list(x)

    input_ids = rows(batch["input_ids"])
    mask = batch.get("attention_mask")
    mask = rows(mask) if mask is not None else [[1] * len(r) for r in input_ids]
    seq_lens: list[int] = []
    for ids, m in zip(input_ids, mask):
        if count_padding:
            seq_lens.append(len(ids))
            continue
        ids_present = sorted({int(v) for v in m if v})
        seq_lens.extend(sum(1 for v in m if int(v) == i) for i in ids_present)
    grids = []
    for key in ("image_grid_thw", "video_grid_thw"):
        if batch.get(key) is not None:
            grids.extend(tuple(int(x) for x in row) for row in rows(batch[key]))
    return batch_flops(config, seq_lens, grids, **kwargs)


def grid_thw(
    height: int,
    width: int,
    frames: int = 1,
    *,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[int, int, int]:
    """The (t, h, w) grid Qwen2.5-VL's processors give an image (`frames=1`) or a video of
    `frames` frames of `height` x `width` px (Qwen's `smart_resize`; a video's frame count is
    padded to a multiple of `temporal_patch_size`). The defaults are the image processor's pixel
    limits; pass the video processor's for videos."""
    factor = patch_size * merge_size
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} is over 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    t = 1 if frames == 1 else -(-frames // temporal_patch_size)
    return t, h // patch_size, w // patch_size


def mfu(flops_per_second: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s (`FlopCount.train_model` per second) over
    the peak FLOP/s (e.g. `load_peak`). Both in FLOP/s, not TFLOP/s."""
    if peak_flops_per_second <= 0:
        raise ValueError(f"peak must be positive, got {peak_flops_per_second}")
    return flops_per_second / peak_flops_per_second


def load_peak(path: str | Path) -> float:
    """The measured peak in FLOP/s from `benchmarks/bf16_peak.py`'s JSON (`bf16_tflops`)."""
    return float(json.loads(Path(path).read_text())["bf16_tflops"]) * 1e12


# --------------------------------------------------------------------------------------------
# command line


def size_config(size: str):
    """The config of a `tiny.py` model size (tiny, 3b, 7b), built without weights."""
    from axolotl_qwenvl_plugin.tiny import build_config, build_tokenizer

    return build_config(size, build_tokenizer())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Analytic LoRA training FLOPs of Qwen2.5-VL for one sample")
    parser.add_argument("--size", choices=("tiny", "3b", "7b"), action="append", help="model shape (repeatable)")
    parser.add_argument("--config", help="a config.json or model directory instead of --size")
    parser.add_argument("--seq", type=int, required=True, help="LLM tokens of the sample, vision pads included")
    parser.add_argument("--image", action="append", default=[], metavar="HxW", help="an image (repeatable)")
    parser.add_argument("--video", action="append", default=[], metavar="FxHxW", help="a video: frames x H x W")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--full-attention", action="store_true", help="count the LLM's causal attention in full")
    parser.add_argument("--no-input-require-grads", action="store_true")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)

    grids = [grid_thw(*map(int, s.split("x"))) for s in args.image]
    grids += [
        grid_thw(int(h), int(w), int(f), min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28)
        for f, h, w in (s.split("x") for s in args.video)
    ]
    if args.config:
        configs = [(args.config, args.config)]
    else:
        configs = [(size, size_config(size)) for size in (args.size or ["3b", "7b"])]
    for name, config in configs:
        c = batch_flops(
            config, [args.seq], grids,
            lora_rank=args.lora_rank,
            causal=not args.full_attention,
            input_require_grads=not args.no_input_require_grads,
            gradient_checkpointing=not args.no_gradient_checkpointing,
        )
        report = {"model": name, "grids": grids, **c.as_dict(), **c.detail}
        report["train_model_per_token"] = c.per_token()
        report["train_hardware_per_token"] = c.per_token(c.train_hardware)
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())

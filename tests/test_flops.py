"""benchmarks/flops.py against torch's FlopCounterMode on real forward/backward passes (CPU), plus
the bf16 peak script's dry run and the results plot.

Where the analytic count and FlopCounterMode should agree, and why they can differ:

* FlopCounterMode counts mm/addmm/bmm/convolution (and SDPA's flash/efficient/cudnn kernels, which
  only run on GPUs). With `attn_implementation="eager"` attention is two matmuls per head, counted
  over the full (masked) square, so it matches `causal=False`. With SDPA on the CPU the fused
  kernel is not counted at all (checked below), so eager is what the comparisons use.
* The only other matmul it sees is the LLM's RoPE frequency product (`inv_freq @ position_ids`,
  3 * head_dim FLOPs per token, in `language_model.rotary_emb`), which the analytic count leaves
  out: the comparisons subtract that module.
Everything else agrees exactly, so the tolerances below are tight.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

flops = importlib.import_module("benchmarks.flops")
bf16_peak = importlib.import_module("benchmarks.bf16_peak")
plot_results = importlib.import_module("benchmarks.plot_results")

REL = 1e-6  # everything counted is an exact integer; this only absorbs float sums
LLM_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VIT_QKV_REGEX = r".*visual\.blocks\.\d+\.attn\.qkv"


# ------------------------------------------------------------------------------------------
# helpers


def _parts(counter) -> dict[str, int]:
    """FlopCounterMode's counts split into vit / llm (decoder, no RoPE) / lm_head / rope / total."""
    out = {"vit": 0, "llm": 0, "lm_head": 0, "rope": 0}
    for name, ops in counter.get_flop_counts().items():
        n = sum(ops.values())
        if name.endswith(".visual"):
            out["vit"] += n
        elif name.endswith(".language_model"):
            out["llm"] += n
        elif name.endswith(".lm_head"):
            out["lm_head"] += n
        elif name.endswith("language_model.rotary_emb"):
            out["rope"] += n
    out["llm"] -= out["rope"]
    out["total"] = counter.get_total_flops()
    return out


def _close(measured: int, expected: int, rel: float = REL) -> bool:
    return abs(measured - expected) <= rel * max(abs(expected), 1)


@pytest.fixture(scope="module")
def mm_inputs(processor):
    """One chat sample with a 224x168 image (12x16 patches = 6x8 merged: 2x2 ViT windows, the
    last ones partial) and a 4-frame 140x112 video (2x8x10 patches: 1x2 windows per frame; the
    video pixel floor is lowered so the CPU passes stay small)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (168, 224, 3), dtype=np.uint8))
    video = rng.integers(0, 256, (4, 112, 140, 3), dtype=np.uint8)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Describe both."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square and a ball moving right."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(
        text=[text],
        images=[image],
        videos=[video],
        return_tensors="pt",
        do_sample_frames=False,
        videos_kwargs={"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 768, "cap_pixels_per_frame": False},
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 16]]
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 10]]
    inputs["labels"] = inputs["input_ids"].clone()
    return inputs


def _load(tiny_model_dir, attn="eager"):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation=attn)


def _count_forward(model, inputs):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**{k: v for k, v in inputs.items() if k != "labels"})
    return _parts(counter)


# ------------------------------------------------------------------------------------------
# attention segments: the windows transformers builds


@pytest.mark.parametrize(
    "grid", [(1, 12, 16), (2, 24, 24), (1, 14, 18), (1, 32, 32), (8, 24, 24), (3, 6, 50), (1, 2, 2)]
)
@pytest.mark.parametrize("window_size", [112, 56])
def test_vit_attention_pairs_match_transformers_windows(grid, window_size):
    import torch
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

    shapes = flops.shapes_from_config(
        {"text_config": {"hidden_size": 64, "num_attention_heads": 4}, "vision_config": {"window_size": window_size}}
    )
    thw = torch.tensor([grid])
    _, cu_win = get_vision_window_index(thw, spatial_merge_size=2, window_size=window_size, patch_size=14)
    cu_full = get_vision_cu_seqlens(thw)
    expected_win = int((cu_win.diff().long() ** 2).sum())
    expected_full = int((cu_full.diff().long() ** 2).sum())
    assert flops.vit_attention_pairs([grid], shapes) == (expected_full, expected_win)


def test_window_pairs_by_hand():
    shapes = flops.shapes_from_config(
        {"text_config": {"hidden_size": 64, "num_attention_heads": 4}, "vision_config": {"window_size": 112}}
    )
    # 10x14 patches = 5x7 merged tokens; 4x4-merged windows -> sides [4, 1] x [4, 3] merged,
    # i.e. windows of 64, 48, 16 and 12 patches; full attention over all 140, per frame.
    assert flops.vit_attention_pairs([(2, 10, 14)], shapes) == (2 * 140**2, 2 * (64**2 + 48**2 + 16**2 + 12**2))


# ------------------------------------------------------------------------------------------
# forward against FlopCounterMode


def test_forward_matches_flop_counter_on_tiny_model(tiny_model_dir, mm_inputs):
    measured = _count_forward(_load(tiny_model_dir), mm_inputs)
    count = flops.flops_from_batch(tiny_model_dir, mm_inputs, causal=False)
    assert count.vit_patches == 12 * 16 + 2 * 8 * 10
    assert count.llm_tokens == mm_inputs["input_ids"].shape[1]
    assert measured["vit"] > 0 and measured["llm"] > 0
    assert _close(measured["vit"], count.vit_fwd), (measured, count)
    assert _close(measured["llm"] + measured["lm_head"], count.llm_fwd), (measured, count)
    assert _close(measured["lm_head"], count.lm_head_fwd)
    # RoPE's frequency matmul is the only thing left out: 3 * head_dim FLOPs per token
    assert measured["rope"] == 3 * 16 * count.llm_tokens
    assert measured["total"] == count.llm_fwd + count.vit_fwd + measured["rope"]  # (forward adds LoRA)

    # causal=True counts the k <= q half of the LLM's score matrix; the ViT is not causal
    causal = flops.flops_from_batch(tiny_model_dir, mm_inputs, causal=True)
    s = count.llm_tokens
    assert causal.llm_attn_fwd * s * s == count.llm_attn_fwd * (s * (s + 1) // 2)
    assert causal.vit_fwd == count.vit_fwd


def test_flop_counter_does_not_see_sdpa_attention_on_cpu(tiny_model_dir, mm_inputs):
    """Why the comparisons use eager: on the CPU SDPA's fused kernel is invisible to
    FlopCounterMode (on a GPU its flash/efficient kernels are counted, as a full square)."""
    measured = _count_forward(_load(tiny_model_dir, "sdpa"), mm_inputs)
    count = flops.flops_from_batch(tiny_model_dir, mm_inputs, causal=False)
    assert measured["vit"] == count.vit_fwd - count.vit_attn_fwd
    assert measured["llm"] + measured["lm_head"] == count.llm_fwd - count.llm_attn_fwd


def _custom_model(tiny_model_dir):
    """A wider variant: 3 LLM layers, 1 KV head (GQA 6:1), untied lm_head; a 4-block ViT with
    full attention in blocks 1 and 3 and 56 px windows (2x2 merged tokens)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(tiny_model_dir)
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 96, 160, 3
    text.num_attention_heads, text.num_key_value_heads = 6, 1  # head_dim 16, mrope (2, 3, 3)
    text.layer_types, text.max_window_layers = ["full_attention"] * 3, 3
    config.tie_word_embeddings = text.tie_word_embeddings = False
    vision.depth, vision.hidden_size, vision.num_heads, vision.intermediate_size = 4, 48, 3, 80
    vision.fullatt_block_indexes, vision.window_size, vision.out_hidden_size = [1, 3], 56, 96
    return Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="eager")


def test_forward_matches_on_a_padded_batch_of_a_custom_config(tiny_model_dir, processor):
    from PIL import Image

    model = _custom_model(tiny_model_dir)
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (196, 252, 3), dtype=np.uint8)),  # 14x18 patches: edge windows
        Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)),
    ]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}], tokenize=False
        )
        for prompt in ("What is in the image?", "Describe the picture. " * 6)
    ]
    processor.tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert batch["image_grid_thw"].tolist() == [[1, 14, 18], [1, 4, 6]]
    rows = batch["attention_mask"].sum(-1).tolist()
    assert rows[0] != rows[1], "the batch should need padding"

    measured = _count_forward(model, batch)
    padded = flops.flops_from_batch(model.config, batch, count_padding=True, causal=False)
    assert padded.llm_tokens == 2 * batch["input_ids"].shape[1]
    assert _close(measured["vit"], padded.vit_fwd), (measured, padded)
    assert _close(measured["llm"] + measured["lm_head"], padded.llm_fwd), (measured, padded)
    unpadded = flops.flops_from_batch(model.config, batch, causal=False)
    assert unpadded.llm_tokens == sum(rows)
    assert unpadded.llm_fwd < padded.llm_fwd and unpadded.vit_fwd == padded.vit_fwd


def test_forward_matches_real_3b_shapes_on_the_meta_device(tokenizer):
    """The real Qwen2.5-VL-3B shapes (GQA 16:2, 112 px windows, full attention in blocks 7, 15,
    23, 31), run on the meta device so no weights or FLOPs are spent. RoPE needs real position
    tensors, so both rotary modules are stubbed (they hold no counted matmul we compare)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen2_5_VLForConditionalGeneration

    from axolotl_qwenvl_plugin.tiny import build_config

    config = build_config("3b", tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="eager"
        )
    vit_head = config.vision_config.hidden_size // config.vision_config.num_heads
    llm_head = config.text_config.hidden_size // config.text_config.num_attention_heads
    model.model.visual.rotary_pos_emb.forward = lambda x, pos: (torch.empty(x.shape[0], vit_head, device="meta"),) * 2
    model.model.language_model.rotary_emb.forward = lambda x, pos: (
        torch.empty(1, x.shape[1], llm_head, device="meta", dtype=x.dtype),
    ) * 2
    grids = [[1, 16, 20], [2, 12, 12]]  # an 8x10-merged image (2x3 windows, partial) + 2 video frames
    seq = 300
    patches = sum(t * h * w for t, h, w in grids)
    with FlopCounterMode(display=False) as counter:
        pixels = torch.empty(patches, 1176, device="meta", dtype=torch.bfloat16)
        model.model.visual(pixels, grid_thw=torch.tensor(grids))
        embeds = torch.empty(1, seq, config.text_config.hidden_size, device="meta", dtype=torch.bfloat16)
        positions = torch.zeros(3, 1, seq, dtype=torch.long, device="meta")
        hidden = model.model.language_model(inputs_embeds=embeds, position_ids=positions).last_hidden_state
        model.lm_head(hidden)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    count = flops.batch_flops(config, [seq], grids, causal=False)
    assert by_module["Qwen2_5_VisionTransformerPretrainedModel"] == count.vit_fwd
    assert by_module["Qwen2_5_VLTextModel"] + by_module["Linear"] == count.llm_fwd


# ------------------------------------------------------------------------------------------
# LoRA training step (forward + backward) against FlopCounterMode


CASES = {
    # the work the maths needs: LLM LoRA, frozen ViT, nothing forced to require grad
    "model_flops": dict(target=LLM_REGEX, hooks=False, gc=None, kw={}),
    # Axolotl's default: load_adapter's enable_input_require_grads + non-reentrant checkpointing
    "axolotl_default": dict(target=LLM_REGEX, hooks=True, gc="non-reentrant", kw={}),
    # LoRA on the ViT's qkv, the merger trained in full, reentrant checkpointing
    "vision_lora_reentrant": dict(
        target=f"({LLM_REGEX})|({VIT_QKV_REGEX})",
        hooks=True,
        gc="reentrant",
        merger=True,
        kw=dict(vision_lora_targets=("qkv",), merger_trainable=True, reentrant=True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lora_train_step_matches_flop_counter(case, tiny_model_dir, mm_inputs):
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    spec = CASES[case]
    rank = 4
    peft_model = get_peft_model(
        _load(tiny_model_dir), LoraConfig(r=rank, lora_alpha=8, lora_dropout=0.0, target_modules=spec["target"])
    )
    model = peft_model.base_model.model
    if spec.get("merger"):
        for p in model.model.visual.merger.parameters():
            p.requires_grad_(True)
    if spec["gc"]:
        # transformers' gradient_checkpointing_enable also calls enable_input_require_grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": spec["gc"] == "reentrant"})
    if spec["hooks"]:
        model.enable_input_require_grads()
    assert bool(getattr(model, "_require_grads_hooks", None)) == spec["hooks"]
    peft_model.train()
    with FlopCounterMode(display=False) as counter:
        peft_model(**mm_inputs).loss.backward()
    measured = _parts(counter)

    count = flops.flops_from_batch(
        tiny_model_dir,
        mm_inputs,
        lora_rank=rank,
        causal=False,
        input_require_grads=spec["hooks"],
        gradient_checkpointing=bool(spec["gc"]),
        **spec["kw"],
    )
    # eager attention has no fused backward, so no QK^T recompute
    expected = count.train_hardware - count.attn_bwd_recompute
    assert _close(measured["total"] - measured["rope"], expected), (case, measured, count)
    if case == "model_flops":
        assert expected == count.train_model
        assert count.bwd_unneeded == count.recompute == 0
        assert count.detail["vit_bwd_input"] == 0  # the frozen ViT needs no backward
    if case == "axolotl_default":
        # the frozen ViT gets a full input-gradient backward nothing uses, and is recomputed
        # (every matmul after patch_embed, attention's twice)
        patch_embed = 2 * count.vit_patches * 1176 * 32  # tiny ViT: 3*2*14*14 inputs -> 32 channels
        assert count.detail["vit_bwd_unneeded"] == count.vit_fwd - patch_embed + count.vit_attn_fwd
        assert count.detail["vit_recompute"] > 0


# ------------------------------------------------------------------------------------------
# pure accounting


def _sizes(tokenizer):
    from axolotl_qwenvl_plugin.tiny import build_config

    return {size: build_config(size, tokenizer) for size in ("3b", "7b")}


SAMPLE_GRIDS = [(1, 32, 32), (8, 24, 24)]  # a 448x448 image + a 16-frame 336x336 video
SAMPLE_TOKENS = 2654


def test_sample_grids_are_what_the_processors_give(processor):
    assert flops.grid_thw(448, 448) == SAMPLE_GRIDS[0]
    assert flops.grid_thw(336, 336, 16, min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28) == SAMPLE_GRIDS[1]
    for h, w in [(448, 448), (168, 224), (1000, 3000), (20, 30), (57, 901)]:
        got = processor.image_processor(
            images=[np.zeros((h, w, 3), dtype=np.uint8)], return_tensors="pt"
        )["image_grid_thw"].tolist()
        assert [list(flops.grid_thw(h, w))] == got, (h, w)


def test_real_config_numbers(tokenizer):
    """Per-token model FLOPs of one LoRA step on the report's sample (pinned), and the closed forms."""
    configs = _sizes(tokenizer)
    expected = {"3b": (16.453e9, 27.618e9), "7b": (32.864e9, 51.793e9)}
    for size, config in configs.items():
        c = flops.batch_flops(config, [SAMPLE_TOKENS], SAMPLE_GRIDS)
        model_tok, hw_tok = expected[size]
        assert c.per_token() == pytest.approx(model_tok, rel=1e-3), size
        assert c.per_token(c.train_hardware) == pytest.approx(hw_tok, rel=1e-3), size
        # closed form of the LLM forward: 2 * params * tokens + causal attention + lm_head
        t = config.text_config
        d, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
        params = t.num_hidden_layers * (2 * d * d + 2 * d * kv + 3 * d * t.intermediate_size)
        attn = t.num_hidden_layers * 4 * d * SAMPLE_TOKENS * (SAMPLE_TOKENS + 1) // 2
        assert c.llm_fwd == 2 * params * SAMPLE_TOKENS + attn + 2 * SAMPLE_TOKENS * d * t.vocab_size
        # frozen ViT: model FLOPs hold its forward only. LLM backward: input gradients of every
        # matmul (attention's twice), except the first layer's q/k/v (and their LoRA A), whose
        # input needs none; LoRA weight gradients as large as the LoRA forward.
        assert c.detail["vit_bwd_input"] == 0
        r, T = 16, SAMPLE_TOKENS
        first_qkv = 2 * T * d * (d + 2 * kv) + 3 * 2 * T * d * r
        assert c.backward == c.llm_fwd + c.llm_attn_fwd + 2 * c.lora_fwd - first_qkv


def test_text_only_lora_step_is_about_twice_the_forward(tokenizer):
    config = _sizes(tokenizer)["3b"]
    c = flops.batch_flops(config, [4096], [], input_require_grads=False, gradient_checkpointing=False)
    assert c.vit_fwd == 0 and c.recompute == 0 and c.bwd_unneeded == 0
    # no weight gradients of the base: backward ~ forward (attention's backward is 2x its forward)
    assert 1.9 < c.train_model / c.forward < 2.1


def test_lora_counts_scale_with_rank(tokenizer):
    config = _sizes(tokenizer)["3b"]
    r8 = flops.batch_flops(config, [1000], lora_rank=8)
    r16 = flops.batch_flops(config, [1000], lora_rank=16)
    assert r16.lora_fwd == 2 * r8.lora_fwd
    assert r16.bwd_weight == r16.lora_fwd  # only LoRA weights get gradients
    none = flops.batch_flops(config, [1000], lora_targets=(), input_require_grads=False)
    assert none.backward == 0 and none.lora_fwd == 0  # nothing trainable: no backward at all


def test_old_flat_config_json_layout(tmp_path):
    # the layout of Qwen/Qwen2.5-VL-3B-Instruct's config.json (text keys at the top, in_chans)
    flat = {
        "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
        "vision_config": {
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(flat))
    shapes = flops.shapes_from_config(tmp_path)
    assert shapes.head_dim == 128 and shapes.num_key_value_heads == 2 and shapes.in_channels == 3
    assert shapes.fullatt_block_indexes == (7, 15, 23, 31)


def test_flops_from_batch_splits_packed_samples(tiny_model_dir):
    batch = {
        "input_ids": [[5, 5, 5, 5, 5, 0], [5, 5, 5, 5, 0, 0]],
        "attention_mask": [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]],  # row 0 packs two samples
    }
    c = flops.flops_from_batch(tiny_model_dir, batch)
    expected = flops.batch_flops(tiny_model_dir, [3, 2, 4])
    assert c == expected
    padded = flops.flops_from_batch(tiny_model_dir, batch, count_padding=True)
    assert padded == flops.batch_flops(tiny_model_dir, [6, 6])


def test_bad_inputs_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="vision tokens"):
        flops.batch_flops(tiny_model_dir, [10], [(1, 8, 8)])  # 16 image tokens in a 10-token sample
    with pytest.raises(ValueError, match="unknown modules"):
        flops.batch_flops(tiny_model_dir, [10], lora_targets=("qkv",))
    with pytest.raises(ValueError, match="multiples of 2"):
        flops.batch_flops(tiny_model_dir, [100], [(1, 7, 8)])


def test_mfu_and_peak(tmp_path):
    path = tmp_path / "peak.json"
    path.write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "bf16_tflops": 800.0}))
    peak = flops.load_peak(path)
    assert peak == 800e12
    assert flops.mfu(200e12, peak) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        flops.mfu(1.0, 0.0)


# ------------------------------------------------------------------------------------------
# benchmarks/bf16_peak.py and benchmarks/plot_results.py


def test_bf16_peak_cpu_dry_run(tmp_path, capsys):
    out = tmp_path / "peak.json"
    assert bf16_peak.main(["--cpu", "--seconds", "0.5", "--shapes", "64x64x64,128x64x32", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["gpu"].startswith("cpu")
    assert result["bf16_tflops"] > 0
    assert set(result["shapes"]) == {"64x64x64", "128x64x32"}
    assert result["bf16_tflops"] == pytest.approx(max(s["best_tflops"] for s in result["shapes"].values()), rel=1e-3)
    assert flops.load_peak(out) == pytest.approx(result["bf16_tflops"] * 1e12)


SAMPLE_RUNS = {
    "gpu": "NVIDIA H100 80GB HBM3",
    "bf16_tflops": 760.0,
    "runs": [
        {"path": "A", "label": "transformers + bnb", "model": "3b", "batch": 1, "seq": 2654, "mix": "image",
         "tokens_per_s": 2466.0, "samples_per_s": 0.93, "peak_gib": 6.1, "mfu": 0.053},
        {"path": "B", "label": "plugin Unsloth", "model": "3b", "batch": 1, "seq": 2654, "mix": "image",
         "tokens_per_s": 2698.0, "samples_per_s": 1.02, "peak_gib": 4.4, "mfu": 0.058},
        {"path": "A", "label": "transformers + bnb", "model": "7b", "batch": 2, "seq": 4096, "mix": "video",
         "tokens_per_s": 1500.0, "samples_per_s": 0.37, "peak_gib": 14.2, "mfu": None},
    ],
}


def test_plot_results_validates_runs(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(SAMPLE_RUNS))
    runs, meta = plot_results.load_runs([path])
    assert len(runs) == 3 and meta == {"gpu": "NVIDIA H100 80GB HBM3", "bf16_tflops": 760.0}
    bad = dict(SAMPLE_RUNS["runs"][0], mix="audio")
    with pytest.raises(ValueError, match="mix"):
        plot_results.validate_run(bad)
    with pytest.raises(ValueError, match="tokens_per_s"):
        plot_results.validate_run({k: v for k, v in SAMPLE_RUNS["runs"][0].items() if k != "tokens_per_s"})
    with pytest.raises(ValueError, match="mfu"):
        plot_results.validate_run(dict(SAMPLE_RUNS["runs"][0], mfu=31.0))  # a percentage, not a fraction


def test_plot_results_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(SAMPLE_RUNS))
    out = tmp_path / "chart.png"
    assert plot_results.main([str(path), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

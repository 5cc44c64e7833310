"""The offline Qwen2.5-VL builder: the saved folder loads with the Auto classes and trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from axolotl_qwenvl_plugin.tiny import QWEN_SPECIAL_TOKENS, SIZES, build_config, build_tokenizer


def test_saved_folder_loads_offline(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert model.config.model_type == "qwen2_5_vl"
    assert (tiny_model_dir / "processor_config.json").exists()
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIAL_TOKENS)))  # Qwen's order, consecutive
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    rope = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["rope_parameters"]
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    assert sum(rope["mrope_section"]) == head_dim // 2
    # A special token is one id, never split by the BPE.
    assert tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == ids[1]
    rendered = processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi")


def test_forward_backward_with_image_and_video(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.video_utils import VideoMetadata

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8))
    frames = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    metadata = VideoMetadata(total_num_frames=8, fps=4.0, width=56, height=56, frames_indices=[0, 2, 4, 6])
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "what?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a test"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(
        text=[text],
        images=[image],
        videos=[frames],
        video_metadata=[metadata],
        videos_kwargs={"min_pixels": 3136, "max_pixels": 3136, "cap_pixels_per_frame": False},
        return_tensors="pt",
    )
    batch["labels"] = batch["input_ids"].clone()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(name.startswith("model.visual.") for name in grads), "no gradient reached the ViT"
    assert any(name.startswith("model.language_model.") for name in grads)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize(("size", "billions"), [("3b", 3.75), ("7b", 8.29)])
def test_real_sizes_have_published_parameter_counts(size, billions):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = build_config(size, build_tokenizer())
    with torch.device("meta"):  # shapes only, no memory
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    count = sum(p.numel() for p in model.parameters()) / 1e9
    assert count == pytest.approx(billions, rel=0.01)
    assert config.vision_config.depth == SIZES[size].vision_depth == 32

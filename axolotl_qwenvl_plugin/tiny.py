"""Build a random-weight Qwen2.5-VL checkpoint offline (no Hugging Face Hub needed).

    python -m axolotl_qwenvl_plugin.tiny OUT_DIR [--size tiny|3b|7b] [--seed 0]

`tiny` is a 2-layer model with a 2-block ViT (a few MB) that trains on CPU in seconds;
`3b` and `7b` have the real Qwen2.5-VL shapes, for GPU benchmarks where no weights can be
downloaded. Every size shares one offline-trained byte-level BPE tokenizer whose Qwen
special tokens sit in Qwen's order, and a real `Qwen2_5_VLProcessor` with the Qwen2-VL
chat template, so `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained` load the
directory with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

# Qwen2's special tokens in their canonical order: ids are assigned in this order right after
# the BPE vocabulary, so the vision tokens keep Qwen's relative layout.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Enough varied English (plus the chat-template words) for a small BPE to learn real merges.
_CORPUS = """\
system user assistant You are a helpful assistant.
Describe the picture. What is in the image? Summarise the video. The cat sat on the mat.
A red square on a blue background. A green circle next to a yellow triangle.
Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt
ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
In the video a ball moves from the left to the right, then the colour changes to red.
Question: how many objects are there? Answer: there are three objects in the scene.
0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 , . ; : ! ? ( ) [ ] { } " ' - _ / \\ + = * & % $ # @
Über café naïve résumé 日本語 中文 한국어 emoji 🙂 newline
tabs\tand  spaces
"""


@dataclass(frozen=True)
class ModelShape:
    """The numbers that define one Qwen2.5-VL size (text tower + ViT)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: tuple[int, int, int]
    tie_word_embeddings: bool
    vocab_size: int | None  # None: exactly the tokenizer's size
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    vision_fullatt_block_indexes: tuple[int, ...]
    max_position_embeddings: int
    # The tiny model uses a wider init: with std 0.02 a 64-wide model's logits are nearly flat and
    # LoRA cannot sharpen them past the frozen final norm, so the CPU demo would barely learn.
    initializer_range: float = 0.02


# 3b / 7b follow the published Qwen2.5-VL configs; tiny keeps every structural feature
# (GQA, M-RoPE sections summing to head_dim/2, windowed + full-attention ViT blocks).
SIZES: dict[str, ModelShape] = {
    "tiny": ModelShape(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        tie_word_embeddings=True,
        vocab_size=None,
        vision_depth=2,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_heads=2,
        vision_fullatt_block_indexes=(1,),
        max_position_embeddings=32768,
        initializer_range=0.1,
    ),
    "3b": ModelShape(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        mrope_section=(16, 24, 24),
        tie_word_embeddings=True,
        vocab_size=151936,
        vision_depth=32,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        vision_fullatt_block_indexes=(7, 15, 23, 31),
        max_position_embeddings=128000,
    ),
    "7b": ModelShape(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        mrope_section=(16, 24, 24),
        tie_word_embeddings=False,
        vocab_size=152064,
        vision_depth=32,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        vision_fullatt_block_indexes=(7, 15, 23, 31),
        max_position_embeddings=128000,
    ),
}

TINY_BPE_VOCAB_SIZE = 1024


def build_tokenizer():
    """Train a byte-level BPE offline and wrap it as a `Qwen2Tokenizer` with Qwen's specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    # The same pre-tokenizer as Qwen2Tokenizer, so the learned merges apply unchanged.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(m) for m in _bpe_merges(bpe)]

    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS[1:]]}
    )
    tokenizer.model_max_length = 32768
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise RuntimeError(f"Qwen special tokens did not get consecutive ids: {ids}")
    return tokenizer


def _bpe_merges(bpe) -> list[list[str]]:
    """The learned merges, read from the serialised model (the Python API does not expose them)."""
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [m.split(" ") if isinstance(m, str) else m for m in merges]


def build_processor(tokenizer):
    """A real `Qwen2_5_VLProcessor` with the Qwen2-VL chat template and default pixel limits."""
    from axolotl.utils.chat_templates import get_chat_template
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=128 * 28 * 28, max_pixels=28 * 28 * 768, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    chat_template = get_chat_template("qwen2_vl")
    tokenizer.chat_template = chat_template
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def build_config(size: str, tokenizer):
    from transformers import Qwen2_5_VLConfig

    shape = SIZES[size]
    head_dim = shape.hidden_size // shape.num_attention_heads
    if sum(shape.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {shape.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    vocab_size = shape.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        max_window_layers=shape.num_hidden_layers,
        rms_norm_eps=1e-6,
        initializer_range=shape.initializer_range,
        rope_parameters={
            "rope_type": "default",
            "mrope_section": list(shape.mrope_section),
            "rope_theta": 1000000.0,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    vision_config = dict(
        depth=shape.vision_depth,
        hidden_size=shape.vision_hidden_size,
        intermediate_size=shape.vision_intermediate_size,
        num_heads=shape.vision_num_heads,
        out_hidden_size=shape.hidden_size,
        fullatt_block_indexes=list(shape.vision_fullatt_block_indexes),
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=112,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
        initializer_range=shape.initializer_range,
    )


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write tokenizer, processor and random weights of the given size to `out_dir`."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(size, tokenizer)

    torch.manual_seed(seed)
    torch_dtype = torch.float32 if size == "tiny" else getattr(torch, dtype)
    # Large shapes are built directly in the target dtype on the fastest device available.
    device = "cuda" if size != "tiny" and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype)
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.bos_token_id],
        pad_token_id=text.pad_token_id,
    )
    model.save_pretrained(out, max_shard_size="5GB")
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m axolotl_qwenvl_plugin.tiny",
        description="Build a random-weight Qwen2.5-VL checkpoint offline.",
    )
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model shape (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--dtype", default="bfloat16", help="weight dtype for 3b/7b (tiny is always float32)")
    args = parser.parse_args(argv)
    out = build(args.out_dir, size=args.size, seed=args.seed, dtype=args.dtype)
    print(f"wrote a random-weight Qwen2.5-VL ({args.size}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

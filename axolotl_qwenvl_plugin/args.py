"""The `qwenvl:` YAML block: validated settings, defaults and cross-checks.

Axolotl merges `QwenVLArgs` into its config schema (through `QwenVLPlugin.get_input_args`), so a
bad value fails `axolotl train` / `axolotl preprocess` at config time with the key in the message.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# One "vision token" covers a 28x28 pixel square (patch 14, merged 2x2), and a video token also
# spans two frames (temporal patch 2). Pixel budgets below are written in those units.
TOKEN_PIXELS = 28 * 28

# Bump when the prepared-record layout changes, so stale `axolotl preprocess` caches are not reused.
RECORD_FORMAT_VERSION = 1


class BadRecordPolicy(str, Enum):
    ERROR = "error"
    SKIP = "skip"


class MediaFreeBatchPadding(str, Enum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class Loader(str, Enum):
    AUTO = "auto"
    UNSLOTH = "unsloth"
    TRANSFORMERS = "transformers"


class QwenVLConfig(BaseModel):
    """Settings of the `qwenvl:` block. Every key is optional; defaults follow Qwen2.5-VL's."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True, validate_default=True)

    # -- where media come from -------------------------------------------------------------------
    media_dir: str | None = Field(
        default=None,
        description="Folder that relative media paths are resolved against. Default: the folder of "
        "each data file. A relative media_dir is resolved against the config file's folder.",
    )
    image_template: str | None = Field(
        default=None,
        description="Path template for `<image_no_N>` in records without an `images` list, "
        "e.g. `images/image_no_{n}.jpg` (`{n}` is N).",
    )
    video_template: str | None = Field(
        default=None,
        description="Path template for `<video_no_N>` in records without a `videos` list, "
        "e.g. `videos/video_no_{n}.mp4`.",
    )
    allow_outside_media_dir: bool = Field(
        default=False,
        description="Accept media paths that resolve outside media_dir (absolute paths, `..`, "
        "symlinks out). Off by default so shared configs cannot read arbitrary files.",
    )

    # -- image budget ----------------------------------------------------------------------------
    image_min_pixels: int = Field(
        default=4 * TOKEN_PIXELS,
        gt=0,
        description="Images smaller than this many pixels are upscaled (Qwen default 56*56).",
    )
    image_max_pixels: int = Field(
        default=1280 * TOKEN_PIXELS,
        gt=0,
        description="Images larger than this many pixels are downscaled (Qwen default 1280*28*28, "
        "i.e. at most 1280 vision tokens per image).",
    )

    # -- video budget ----------------------------------------------------------------------------
    video_fps: float = Field(
        default=2.0, gt=0, le=120, description="Frames sampled per second of video."
    )
    video_min_frames: int = Field(
        default=4, ge=2, description="Fewest frames sampled from a video (when it has that many)."
    )
    video_max_frames: int = Field(
        default=768, ge=2, description="Most frames sampled from one video."
    )
    video_min_pixels: int = Field(
        default=128 * TOKEN_PIXELS,
        gt=0,
        description="Per-frame lower pixel bound (Qwen default 128*28*28).",
    )
    video_max_pixels: int = Field(
        default=768 * TOKEN_PIXELS,
        gt=0,
        description="Per-frame upper pixel bound (Qwen default 768*28*28).",
    )
    video_total_pixels: int = Field(
        default=2 * 4096 * TOKEN_PIXELS,
        gt=0,
        description="Pixel budget of one whole video: each frame gets at most "
        "video_total_pixels * 2 / frames (never below 1.05 * video_min_pixels), as in "
        "qwen-vl-utils. A video costs at most about video_total_pixels / 784 tokens: the default "
        "caps it near 8192.",
    )

    # -- data policy -----------------------------------------------------------------------------
    on_bad_record: BadRecordPolicy = Field(
        default=BadRecordPolicy.ERROR,
        description="`error`: stop before training and list every bad record (FILE:LINE). "
        "`skip`: drop bad records, count them by reason and report.",
    )

    # -- multi-GPU -------------------------------------------------------------------------------
    pad_media_free_batches: MediaFreeBatchPadding = Field(
        default=MediaFreeBatchPadding.AUTO,
        description="A batch with no image or video skips the vision tower, so under multi-GPU "
        "training the ranks disagree on which parameters ran: DDP with "
        "`finetune_vision_layers` hangs in the gradient all-reduce, DeepSpeed ZeRO-3 and FSDP "
        "hang in the vision tower's all-gathers. `auto`: when training is distributed "
        "(more than one process), the collator appends a masked 28x28 blank image (one vision "
        "token, attention mask 0, labels -100) to one record of such a batch, so every rank "
        "runs the vision tower and the loss and gradients are unchanged. `always`: also on one "
        "process (the vision LoRA then gets zero gradients instead of none on such steps, so "
        "the optimizer's momentum still moves it, as under DDP). `never`: off.",
    )

    # -- model loading ---------------------------------------------------------------------------
    loader: Loader = Field(
        default=Loader.AUTO,
        description="`unsloth`: FastVisionModel (GPU only). `transformers`: Axolotl's own "
        "loading (bitsandbytes + PEFT). `auto`: unsloth when CUDA and the unsloth extra are "
        "present, else transformers.",
    )
    finetune_vision_layers: bool = Field(
        default=False, description="Put LoRA adapters on the vision tower's blocks (the merger is trained only "
        "through `lora_modules_to_save`)."
    )
    finetune_language_layers: bool = Field(
        default=True, description="Put LoRA adapters on the language model."
    )
    finetune_attention_modules: bool = Field(
        default=True, description="Adapt attention projections (q/k/v/o, ViT qkv/proj)."
    )
    finetune_mlp_modules: bool = Field(
        default=True, description="Adapt MLP projections (gate/up/down, ViT fc)."
    )
    use_gradient_checkpointing: Literal["unsloth"] | bool | None = Field(
        default=None,
        description="Unsloth's checkpointing mode. Default: `unsloth` (activations offloaded to "
        "CPU) when Axolotl's `gradient_checkpointing` is on, else false.",
    )
    batched_vision_attention: bool = Field(
        default=True,
        description="Run the vision tower's window attention as one batched sdpa call per "
        "window size instead of one call per window (transformers' loop without flash-attn: "
        "~16,000 calls per step for 16 672x672 images, which leaves the GPU waiting on the "
        "host). Same results; only applies when the vision tower uses `sdpa`.",
    )

    @model_validator(mode="after")
    def _check_ranges(self):
        pairs = (
            ("image_min_pixels", "image_max_pixels"),
            ("video_min_pixels", "video_max_pixels"),
            ("video_min_frames", "video_max_frames"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"qwenvl.{low} ({getattr(self, low)}) must not exceed qwenvl.{high} "
                    f"({getattr(self, high)})"
                )
        for key in ("image_template", "video_template"):
            template = getattr(self, key)
            if template is not None and "{n}" not in template:
                raise ValueError(
                    f"qwenvl.{key} {template!r} must contain `{{n}}`, the marker number, "
                    f"e.g. `images/image_no_{{n}}.jpg`"
                )
        if not (
            self.finetune_vision_layers or self.finetune_language_layers
        ) or not (self.finetune_attention_modules or self.finetune_mlp_modules):
            raise ValueError(
                "qwenvl.finetune_* flags select no module: enable at least one of "
                "finetune_vision_layers / finetune_language_layers and one of "
                "finetune_attention_modules / finetune_mlp_modules"
            )
        return self

    def preparation_fingerprint(self) -> str:
        """A short hash of every setting that changes prepared records (pad counts, paths)."""
        keys = (
            "media_dir", "image_template", "video_template", "allow_outside_media_dir",
            "image_min_pixels", "image_max_pixels", "video_fps", "video_min_frames",
            "video_max_frames", "video_min_pixels", "video_max_pixels", "video_total_pixels",
            "on_bad_record",
        )  # fmt: skip
        payload = {key: getattr(self, key) for key in keys}
        payload["record_format"] = RECORD_FORMAT_VERSION
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


class QwenVLArgs(BaseModel):
    """Plugin entry merged into Axolotl's config schema: one nested `qwenvl:` block."""

    qwenvl: QwenVLConfig = Field(
        default_factory=QwenVLConfig,
        description="Settings of axolotl-qwenvl-plugin (media, budgets, data policy, loader).",
    )

    @model_validator(mode="before")
    @classmethod
    def _block_must_be_mapping(cls, data):
        if isinstance(data, dict) and data.get("qwenvl") is None and "qwenvl" in data:
            data = {**data, "qwenvl": {}}
        return data

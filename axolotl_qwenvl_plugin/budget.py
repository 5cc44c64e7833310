"""Vision-token budgeting: how many pad tokens each image or video costs, decided at preprocess time.

All resize and frame arithmetic is the processor's own (`get_number_of_image_patches`,
`sample_frames`, `get_num_of_video_patches`): this module only chooses the per-item pixel bounds
from the `qwenvl:` settings, and the collator later passes the very same bounds to the processor,
so the pads written into a record always equal the grid the processor produces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .args import QwenVLConfig
from .media import ImageInfo, VideoInfo


@dataclass(frozen=True)
class ImagePlan:
    """How one image is turned into vision tokens."""

    num_pads: int
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class VideoPlan:
    """How one video is sampled and turned into vision tokens."""

    num_pads: int
    frame_indices: tuple[int, ...]
    total_frames: int
    fps: float
    min_pixels: int
    max_pixels: int  # per frame, after the whole-video budget

    def as_dict(self) -> dict:
        return asdict(self)


def merge_area(processor) -> int:
    """How many ViT patches are merged into one LLM token (2x2 for Qwen2.5-VL)."""
    return processor.image_processor.merge_size**2


def plan_image(processor, info: ImageInfo, settings: QwenVLConfig) -> ImagePlan:
    bounds = {"min_pixels": settings.image_min_pixels, "max_pixels": settings.image_max_pixels}
    patches = processor.image_processor.get_number_of_image_patches(info.height, info.width, dict(bounds))
    return ImagePlan(num_pads=patches // merge_area(processor), **bounds)


def sample_frame_indices(processor, info: VideoInfo, settings: QwenVLConfig) -> list[int]:
    """Frames to decode: `video_fps` per second, clamped to the frame limits, an even count."""
    from transformers.video_utils import VideoMetadata

    video_processor = processor.video_processor
    metadata = VideoMetadata(
        total_num_frames=info.num_frames, fps=info.fps, width=info.width, height=info.height
    )
    indices = video_processor.sample_frames(
        metadata,
        temporal_patch_size=video_processor.temporal_patch_size,
        min_frames=settings.video_min_frames,
        max_frames=settings.video_max_frames,
        fps=settings.video_fps,
    )
    # Float steps in sample_frames can yield one index too many; the grid needs whole temporal patches.
    usable = len(indices) - len(indices) % video_processor.temporal_patch_size
    return [int(i) for i in indices[:usable]]


def per_frame_max_pixels(settings: QwenVLConfig, num_frames: int, temporal_patch_size: int) -> int:
    """The per-frame cap once the whole-video budget is shared out (qwen-vl-utils' rule)."""
    share = settings.video_total_pixels * temporal_patch_size // num_frames
    return max(min(settings.video_max_pixels, share), int(settings.video_min_pixels * 1.05))


def plan_video(processor, info: VideoInfo, settings: QwenVLConfig) -> VideoPlan:
    video_processor = processor.video_processor
    indices = sample_frame_indices(processor, info, settings)
    max_pixels = per_frame_max_pixels(settings, len(indices), video_processor.temporal_patch_size)
    bounds = {"min_pixels": settings.video_min_pixels, "max_pixels": max_pixels}
    patches = video_processor.get_num_of_video_patches(len(indices), info.height, info.width, dict(bounds))
    return VideoPlan(
        num_pads=patches // merge_area(processor),
        frame_indices=tuple(indices),
        total_frames=info.num_frames,
        fps=info.fps,
        **bounds,
    )

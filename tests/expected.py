"""Expected values computed independently of the plugin (straight from the processor), shared by tests."""

from __future__ import annotations

from pathlib import Path


def pad_runs(ids, token_id: int) -> list[int]:
    """Lengths of the maximal runs of `token_id` in a sequence of ids (list or 1-D tensor), left to right."""
    values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    runs, count = [], 0
    for value in values + [None]:
        if value == token_id:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    return runs


def process_planned_video(processor, path, plan, *, min_pixels: int, max_pixels: int, width: int = 64, height: int = 48):
    """The video processor's output for the frames a plan samples, with their real metadata."""
    from transformers.video_utils import VideoMetadata

    from axolotl_qwenvl_plugin.media import read_video_frames

    frames = read_video_frames(Path(path), plan["frame_indices"])
    metadata = VideoMetadata(
        total_num_frames=plan["total_frames"],
        fps=plan["fps"],
        width=width,
        height=height,
        frames_indices=plan["frame_indices"],
    )
    return processor.video_processor(
        videos=[frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        cap_pixels_per_frame=False,
        return_tensors="pt",
    )


def blank_image_inputs(processor, side: int = 28):
    """The image processor's output for a black `side` x `side` image held at exactly that size:
    what a media-free batch's placeholder image must carry (28x28 is one merged vision token)."""
    from PIL import Image

    return processor.image_processor(
        images=[Image.new("RGB", (side, side))], min_pixels=side * side, max_pixels=side * side, return_tensors="pt"
    )

"""Batch assembly: decode the media a batch refers to, run the processors, pad, verify.

Runs inside DataLoader workers. Records arrive already tokenized with their exact vision pads
(see `records`), so the collator only turns files into pixels. Each item is processed with the
pixel bounds it was budgeted with, and its grid is checked against the pads it was given: a wrong
count never reaches the model. The batch also carries `mm_token_type_ids`, without which
transformers silently skips Qwen2.5-VL's 3D (M-RoPE) positions.

Multi-GPU: a batch with no image or video never runs the vision tower, while another rank's batch
does, and the ranks then disagree on which parameters took part in the step. DDP with a trainable
vision tower (`finetune_vision_layers`) hangs: the rank with media waits in a gradient all-reduce
that the other never starts, since it got no vision gradients (`ddp_find_unused_parameters: true`
avoids that at the cost of a graph walk every step); DeepSpeed ZeRO-3 and FSDP hang in the vision
tower's all-gathers. Under distributed training such a batch gets a placeholder image, as in
LLaMA-Factory's "fake image": the smallest image the processor makes (28x28, one vision token) is
appended after the last real token of the shortest record as `<|vision_start|><|image_pad|>
<|vision_end|>`, with attention mask 0 and labels -100. Real tokens never see it (it comes after
them under a causal mask, and is masked besides), the loss ignores it, and M-RoPE positions of
real tokens are unchanged (transformers' `get_rope_index` skips masked tokens, and it comes after
every real token anyway), so the loss and every gradient are those of the batch without it; only
the vision tower also runs, on one blank image, and contributes zero gradients.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .errors import Reason, RecordError
from .media import load_image, read_video_frames
from .records import IGNORE_INDEX
from .reporting import SkipLog

LOG = logging.getLogger(__name__)

# mm_token_type_ids values understood by transformers' Qwen2.5-VL get_rope_index.
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2

# The placeholder image of a media-free batch: one 28x28 square is 2x2 patches of 14, merged 2x2
# into a single vision token, the least the processor can make.
PLACEHOLDER_IMAGE_SIDE = 28
PAD_MEDIA_FREE_BATCHES = ("auto", "always", "never")


def distributed_world_size() -> int:
    """How many processes train together: the process group's size when one is up (also in a
    forked DataLoader worker), else the launcher's `WORLD_SIZE` (torchrun / accelerate set it in
    every rank and spawned workers inherit it)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except (RuntimeError, ValueError):
        pass
    from .loading import world_size

    return world_size()


class QwenVLDataCollator:
    """Builds exact Qwen2.5-VL batches from prepared marker records.

    Axolotl constructs it as `cls(tokenizer, padding=True, pad_to_multiple_of=..., **kwargs,
    return_tensors="pt")`; the plugin passes `processor_source` (loaded lazily, once per worker)
    and `on_bad_record`.
    """

    def __init__(
        self,
        tokenizer,
        *,
        processor_source: str | None = None,
        processor=None,
        on_bad_record: str = "error",
        padding: bool | str = True,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        trust_remote_code: bool = False,
        skip_log_dir: str | None = None,
        pad_media_free_batches: str = "auto",
        **_unused,
    ):
        if processor is None and processor_source is None:
            raise ValueError("QwenVLDataCollator needs a processor or a processor_source")
        self.tokenizer = tokenizer
        self.processor_source = processor_source
        self._processor = processor
        self.on_bad_record = on_bad_record
        self.pad_to_multiple_of = pad_to_multiple_of
        self.trust_remote_code = trust_remote_code
        self.skipped: Counter = Counter()
        self.skip_log = SkipLog(skip_log_dir) if skip_log_dir else None
        if return_tensors != "pt":
            raise ValueError("QwenVLDataCollator only returns PyTorch tensors")
        pad_media_free_batches = getattr(pad_media_free_batches, "value", pad_media_free_batches)
        if pad_media_free_batches not in PAD_MEDIA_FREE_BATCHES:
            raise ValueError(
                f"pad_media_free_batches must be one of {', '.join(PAD_MEDIA_FREE_BATCHES)}, "
                f"not {pad_media_free_batches!r}"
            )
        self.pad_media_free_batches = pad_media_free_batches
        self._placeholder = None  # the processed placeholder image, made on first use

    @property
    def processor(self):
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(
                self.processor_source, trust_remote_code=self.trust_remote_code
            )
        return self._processor

    def __getstate__(self):
        # Workers reload the processor themselves rather than unpickling a large object.
        state = dict(self.__dict__)
        if self.processor_source is not None:
            state["_processor"] = None
            state["_placeholder"] = None
        return state

    def pads_media_free_batches(self) -> bool:
        """Whether a batch without media gets the placeholder image (see the module docstring)."""
        if self.pad_media_free_batches == "auto":
            return distributed_world_size() > 1
        return self.pad_media_free_batches == "always"

    # -- batch ----------------------------------------------------------------------------------
    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        samples = []
        for feature in features:
            try:
                samples.append((feature, self._encode_media(feature)))
            except RecordError as err:
                if self.on_bad_record != "skip":
                    raise
                self.skipped[err.reason.value] += 1
                LOG.warning("qwenvl: skipping a record at training time: %s", err)
                if self.skip_log is not None:
                    self.skip_log.append(
                        "train", {"reason": err.reason.value, "message": str(err), "location": err.location}
                    )
        if not samples:
            raise RecordError(
                Reason.MISSING_FILE,
                "every record of this batch had unreadable media; run `axolotl-qwenvl check CONFIG`",
            )
        features = [feature for feature, _ in samples]
        media = _concat_media([media for _, media in samples])
        if media or not self.pads_media_free_batches():
            batch = self._pad(features)
            batch.update(media)
            return batch
        # No image or video anywhere in the batch: run the vision tower on a masked placeholder.
        placeholder = self.placeholder_image()
        row = min(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        batch = self._pad(features, tail_row=row, tail_ids=placeholder["input_ids"])
        batch["pixel_values"] = placeholder["pixel_values"]
        batch["image_grid_thw"] = placeholder["image_grid_thw"]
        return batch

    def placeholder_image(self) -> dict:
        """Ids, pixels and grid of the blank image that stands in for media in a media-free batch."""
        if self._placeholder is None:
            from PIL import Image

            side = PLACEHOLDER_IMAGE_SIDE
            out = self.processor.image_processor(
                images=[Image.new("RGB", (side, side))],
                min_pixels=side * side,
                max_pixels=side * side,
                return_tensors="pt",
            )
            grid = out["image_grid_thw"].long()
            num_pads = int(grid.prod()) // self.processor.image_processor.merge_size**2
            token = self.tokenizer.convert_tokens_to_ids
            self._placeholder = {
                "input_ids": [token("<|vision_start|>")]
                + [token("<|image_pad|>")] * num_pads
                + [token("<|vision_end|>")],
                "pixel_values": out["pixel_values"],
                "image_grid_thw": grid,
            }
        return self._placeholder

    def _encode_media(self, feature: dict) -> dict[str, list]:
        location = feature.get("qwenvl_location") or "record"
        plans = json.loads(feature.get("qwenvl_media") or "[]")
        self._check_pads_match_plans(feature["input_ids"], plans, location)
        encoded: dict[str, list] = {
            "pixel_values": [],
            "image_grid_thw": [],
            "pixel_values_videos": [],
            "video_grid_thw": [],
            "second_per_grid_ts": [],
        }
        for plan in plans:
            try:
                if plan["kind"] == "image":
                    out = self._process_image(plan)
                    encoded["pixel_values"].append(out["pixel_values"])
                    encoded["image_grid_thw"].append(out["image_grid_thw"][0])
                    grid = out["image_grid_thw"][0]
                else:
                    out, seconds_per_grid = self._process_video(plan)
                    encoded["pixel_values_videos"].append(out["pixel_values_videos"])
                    encoded["video_grid_thw"].append(out["video_grid_thw"][0])
                    encoded["second_per_grid_ts"].append(seconds_per_grid)
                    grid = out["video_grid_thw"][0]
            except RecordError as err:
                err.marker = err.marker or plan["marker"]
                err.path = err.path or plan["path"]
                raise err.at(location)
            produced = int(grid.prod()) // self.processor.image_processor.merge_size**2
            if produced != plan["num_pads"]:
                raise RecordError(
                    Reason.GRID_MISMATCH,
                    f"the processor made {produced} vision tokens (grid {grid.tolist()}) but the "
                    f"record was prepared with {plan['num_pads']}; the file or the qwenvl pixel "
                    "settings changed since preprocessing: delete the prepared dataset and rerun "
                    "`axolotl preprocess`",
                    marker=plan["marker"],
                    path=plan["path"],
                    location=location,
                )
        return encoded

    def _check_pads_match_plans(self, input_ids: list[int], plans: list[dict], location: str) -> None:
        ids = np.asarray(input_ids)
        for kind, token in (("image", "<|image_pad|>"), ("video", "<|video_pad|>")):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            expected = sum(p["num_pads"] for p in plans if p["kind"] == kind)
            found = int((ids == token_id).sum())
            if found != expected:
                raise RecordError(
                    Reason.GRID_MISMATCH,
                    f"the record holds {found} {token} tokens but its media need {expected}; "
                    "the prepared dataset is stale or truncated (never use excess_length_strategy: "
                    "truncate): delete it and rerun `axolotl preprocess`",
                    location=location,
                )

    def _process_image(self, plan: dict):
        image = load_image(Path(plan["path"]))
        return self.processor.image_processor(
            images=[image],
            min_pixels=plan["min_pixels"],
            max_pixels=plan["max_pixels"],
            return_tensors="pt",
        )

    def _process_video(self, plan: dict):
        from transformers.video_utils import VideoMetadata

        frames = read_video_frames(Path(plan["path"]), plan["frame_indices"])
        metadata = VideoMetadata(
            total_num_frames=plan["total_frames"],
            fps=plan["fps"],
            height=int(frames.shape[1]),
            width=int(frames.shape[2]),
            frames_indices=list(plan["frame_indices"]),
        )
        video_processor = self.processor.video_processor
        out = video_processor(
            videos=[frames],
            video_metadata=[metadata],
            do_sample_frames=False,
            min_pixels=plan["min_pixels"],
            max_pixels=plan["max_pixels"],
            # The whole-video budget is already in plan["max_pixels"] (see budget.py).
            cap_pixels_per_frame=False,
            return_tensors="pt",
        )
        # The same formula as Qwen2_5_VLProcessor: temporal patch / the fps actually sampled.
        return out, video_processor.temporal_patch_size / metadata.sampled_fps

    # -- padding --------------------------------------------------------------------------------
    def _pad(
        self, features: list[dict], *, tail_row: int | None = None, tail_ids: list[int] = ()
    ) -> dict[str, torch.Tensor]:
        """Right-pad the records into one batch. `tail_ids` (the placeholder image) go right after
        the real tokens of row `tail_row`, inside its padding: attention mask 0, labels -100."""
        lengths = [len(f["input_ids"]) + (len(tail_ids) if row == tail_row else 0) for row, f in enumerate(features)]
        longest = max(lengths)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        video_id = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        input_ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int32)
        mm_token_type_ids[input_ids == image_id] = IMAGE_TYPE
        mm_token_type_ids[input_ids == video_id] = VIDEO_TYPE
        mm_token_type_ids[attention_mask == 0] = TEXT_TYPE
        if tail_row is not None:
            # Masked like padding, but typed like the image it is: ids and types agree for any
            # consumer that counts image tokens without the attention mask.
            start = len(features[tail_row]["input_ids"])
            tail = torch.as_tensor(list(tail_ids), dtype=torch.long)
            input_ids[tail_row, start : start + len(tail)] = tail
            mm_token_type_ids[tail_row, start : start + len(tail)][tail == image_id] = IMAGE_TYPE
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_token_type_ids": mm_token_type_ids,
        }


def _concat_media(per_sample: list[dict[str, list]]) -> dict[str, torch.Tensor]:
    """Stack media of all samples in order: the model matches them to pads left to right."""
    merged: dict[str, list] = {key: [] for key in per_sample[0]}
    for media in per_sample:
        for key, values in media.items():
            merged[key].extend(values)
    batch: dict[str, torch.Tensor] = {}
    if merged["pixel_values"]:
        batch["pixel_values"] = torch.cat(merged["pixel_values"], dim=0)
        batch["image_grid_thw"] = torch.stack(merged["image_grid_thw"]).long()
    if merged["pixel_values_videos"]:
        batch["pixel_values_videos"] = torch.cat(merged["pixel_values_videos"], dim=0)
        batch["video_grid_thw"] = torch.stack(merged["video_grid_thw"]).long()
        batch["second_per_grid_ts"] = torch.tensor(merged["second_per_grid_ts"], dtype=torch.float32)
    return batch

"""`QwenVLDataCollator`: prepared rows (from `RecordBuilder.build_line`) -> exact Qwen2.5-VL batches.

Expected grids and pixel values come from the processor called directly on the same media; the
batch must carry them in record-then-marker order, with labels/masks exactly as prepared.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
from expected import blank_image_inputs, pad_runs, process_planned_video
from media_factory import frame_index_from_pixels, write_image, write_video
from PIL import Image

from axolotl_qwenvl_plugin.args import QwenVLConfig
from axolotl_qwenvl_plugin.collator import QwenVLDataCollator, distributed_world_size
from axolotl_qwenvl_plugin.errors import Reason, RecordError
from axolotl_qwenvl_plugin.media import read_video_frames
from axolotl_qwenvl_plugin.records import IGNORE_INDEX, RecordBuilder

IMAGE_MAX_PIXELS = 128 * 28 * 28  # small enough that 640x480 is downscaled: the bounds must reach the processor
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 3136, 4 * 3136
SETTINGS = dict(
    image_max_pixels=IMAGE_MAX_PIXELS, video_min_pixels=VIDEO_MIN_PIXELS, video_max_pixels=VIDEO_MAX_PIXELS
)


# ------------------------------------------------------------------------------------ fixtures


def _write_media(folder: Path) -> Path:
    write_image(folder / "big.png", 640, 480, seed=1)
    write_image(folder / "small.png", 56, 56, seed=2)
    write_image(folder / "tall.png", 100, 150, seed=3)
    write_image(folder / "wide.png", 1000, 200, seed=4)
    write_video(folder / "v10.mp4", num_frames=30, fps=10, width=64, height=48, seed=5)
    write_video(folder / "v25.mp4", num_frames=50, fps=25, width=64, height=48, seed=6)
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return _write_media(tmp_path_factory.mktemp("collator-media"))


def make_builder(tokenizer, processor, media_dir, **settings):
    return RecordBuilder(
        tokenizer=tokenizer,
        processor=processor,
        settings=QwenVLConfig(**{**SETTINGS, **settings}),
        media_dir=Path(media_dir),
        sequence_len=4096,
    )


def prepare(builder, record: dict, line: int) -> dict:
    row = builder.build_line(json.dumps(record), f"data.jsonl:{line}")
    assert row["qwenvl_error"] == "", row["qwenvl_error"]
    assert row["qwenvl_location"] == f"data.jsonl:{line}"
    row.pop("qwenvl_error")
    return row


def tid(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def processed_image(processor, path):
    with Image.open(path) as image:
        image = image.convert("RGB")
        return processor.image_processor(
            images=[image], return_tensors="pt", min_pixels=56 * 56, max_pixels=IMAGE_MAX_PIXELS
        )


def processed_video(processor, path, plan):
    return process_planned_video(processor, path, plan, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)


MIXED_RECORDS = [
    {"text": "Lorem<image_no_1>ipsum<image_no_2> dolor", "images": ["big.png", "small.png"]},
    {"prompt": "What is <image_no_2> and <image_no_1>?", "completion": "Two pictures.", "images": ["tall.png", "wide.png"]},
    {
        "messages": [
            {"role": "user", "content": "Summarise <video_no_1> then <video_no_2>."},
            {"role": "assistant", "content": "A counter."},
        ],
        "videos": ["v10.mp4", "v25.mp4"],
    },
]
# Images in record-then-marker order: what image_grid_thw must follow.
MIXED_IMAGE_ORDER = ["big.png", "small.png", "wide.png", "tall.png"]


@pytest.fixture(scope="module")
def mixed_rows(media, tokenizer, processor):
    builder = make_builder(tokenizer, processor, media)
    return [prepare(builder, record, line) for line, record in enumerate(MIXED_RECORDS, start=1)]


@pytest.fixture(scope="module")
def mixed_batch(mixed_rows, tokenizer, processor):
    return QwenVLDataCollator(tokenizer, processor=processor)(mixed_rows)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    return model


# -------------------------------------------------------------------------------- batch layout


def test_mixed_batch_images(mixed_rows, mixed_batch, media, tokenizer, processor):
    batch = mixed_batch
    image_id = tid(tokenizer, "<|image_pad|>")
    expected = [processed_image(processor, media / name) for name in MIXED_IMAGE_ORDER]
    expected_grids = torch.cat([out["image_grid_thw"] for out in expected])
    assert torch.equal(batch["image_grid_thw"], expected_grids)
    # 640x480 is downscaled to the configured budget (proves the bounds reach the processor).
    assert int(batch["image_grid_thw"][0].prod()) // 4 <= IMAGE_MAX_PIXELS // 784
    assert batch["image_grid_thw"][1].tolist() == [1, 4, 4]  # 56x56
    assert batch["image_grid_thw"][3].tolist() == [1, 10, 8]  # 100 wide x 150 high
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert torch.equal(batch["pixel_values"], torch.cat([out["pixel_values"] for out in expected]))

    runs = pad_runs(batch["input_ids"][0], image_id) + pad_runs(batch["input_ids"][1], image_id)
    assert runs == [int(grid.prod()) // 4 for grid in batch["image_grid_thw"]]
    plans = [p for row in mixed_rows for p in json.loads(row["qwenvl_media"]) if p["kind"] == "image"]
    assert runs == [p["num_pads"] for p in plans]
    assert [Path(p["path"]).name for p in plans] == MIXED_IMAGE_ORDER


def test_mixed_batch_text_labels_masks(mixed_rows, mixed_batch, tokenizer):
    batch = mixed_batch
    lengths = [len(row["input_ids"]) for row in mixed_rows]
    longest = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    pad_id = tokenizer.pad_token_id
    for i, (row, n) in enumerate(zip(mixed_rows, lengths)):
        assert batch["input_ids"][i].tolist() == row["input_ids"] + [pad_id] * (longest - n)
        assert batch["labels"][i].tolist() == row["labels"] + [IGNORE_INDEX] * (longest - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)

    vision = [tid(tokenizer, t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")]
    is_vision = torch.isin(batch["input_ids"], torch.tensor(vision))
    assert int(is_vision.sum()) > 0
    assert (batch["labels"][is_vision] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    # Record 2 is prompt+completion: only "Two pictures." + eos is trained.
    trained = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(trained) == "Two pictures." + tokenizer.eos_token
    # Record 3 is a chat: only the assistant turn and its end token.
    trained = batch["labels"][2][batch["labels"][2] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(trained) == "A counter.<|im_end|>"
    # Record 1 is plain text: every text token trained.
    text_ids = [t for t in mixed_rows[0]["input_ids"] if t not in vision]
    assert batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist() == text_ids


def test_mm_token_type_ids(mixed_batch, tokenizer):
    batch = mixed_batch
    ids = batch["input_ids"]
    expected = torch.zeros_like(ids)
    expected[ids == tid(tokenizer, "<|image_pad|>")] = 1
    expected[ids == tid(tokenizer, "<|video_pad|>")] = 2
    assert torch.equal(batch["mm_token_type_ids"].long(), expected)
    assert set(batch["mm_token_type_ids"].unique().tolist()) == {0, 1, 2}
    assert (batch["mm_token_type_ids"][batch["attention_mask"] == 0] == 0).all()


def test_pad_to_multiple_of(mixed_rows, tokenizer, processor):
    batch = QwenVLDataCollator(tokenizer, processor=processor, pad_to_multiple_of=64)(mixed_rows[:2])
    longest = max(len(row["input_ids"]) for row in mixed_rows[:2])
    assert batch["input_ids"].shape[1] == math.ceil(longest / 64) * 64
    assert batch["attention_mask"].sum(1).tolist() == [len(row["input_ids"]) for row in mixed_rows[:2]]
    assert "pixel_values_videos" not in batch and "second_per_grid_ts" not in batch


# ------------------------------------------------------------------------------------- videos


def test_videos_two_frame_rates(mixed_rows, mixed_batch, media, tokenizer, processor):
    batch = mixed_batch
    plans = json.loads(mixed_rows[2]["qwenvl_media"])
    assert [(Path(p["path"]).name, len(p["frame_indices"])) for p in plans] == [("v10.mp4", 6), ("v25.mp4", 4)]
    # (frames / 2, 56/14, 56/14) for each clip.
    assert batch["video_grid_thw"].tolist() == [[3, 4, 4], [2, 4, 4]]
    for plan, grid in zip(plans, batch["video_grid_thw"]):
        assert grid[0] == len(plan["frame_indices"]) // 2
    assert batch["pixel_values_videos"].shape[0] == int(batch["video_grid_thw"].prod(-1).sum())
    runs = pad_runs(batch["input_ids"][2], tid(tokenizer, "<|video_pad|>"))
    assert runs == [12, 8] == [p["num_pads"] for p in plans]

    sampled = [len(p["frame_indices"]) / p["total_frames"] * p["fps"] for p in plans]
    assert sampled == pytest.approx([2.0, 2.0], abs=1e-6)
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([2 / s for s in sampled], abs=1e-6)
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)

    expected = torch.cat([processed_video(processor, media / Path(p["path"]).name, p)["pixel_values_videos"] for p in plans])
    assert torch.equal(batch["pixel_values_videos"], expected)


def test_without_metadata_processor_assumes_24_fps(mixed_rows, mixed_batch, media, processor):
    """The bug the collator avoids: frames handed over without metadata are taken to be 24 fps."""
    plan = json.loads(mixed_rows[2]["qwenvl_media"])[0]
    frames = read_video_frames(media / "v10.mp4", plan["frame_indices"])
    naive = processor(
        text=["<|vision_start|><|video_pad|><|vision_end|>"],
        videos=[frames],
        videos_kwargs={"min_pixels": VIDEO_MIN_PIXELS, "max_pixels": VIDEO_MAX_PIXELS},
        return_tensors="pt",
    )
    assert naive["video_grid_thw"].tolist() == [[3, 4, 4]]
    naive_seconds = float(torch.as_tensor(naive["second_per_grid_ts"])[0])
    assert naive_seconds == pytest.approx(2 / 24)

    sampled_fps = len(plan["frame_indices"]) / plan["total_frames"] * plan["fps"]
    ours = float(mixed_batch["second_per_grid_ts"][0])
    assert ours != pytest.approx(naive_seconds)
    assert ours == pytest.approx(2 / sampled_fps, abs=1e-6)


@pytest.mark.parametrize("clip, expected", [("v10.mp4", [0, 5, 10, 15, 20, 25]), ("v25.mp4", [0, 12, 25, 37])])
def test_planned_frames_are_the_decoded_frames(mixed_rows, media, clip, expected):
    plan = next(p for p in json.loads(mixed_rows[2]["qwenvl_media"]) if p["path"].endswith(clip))
    assert plan["frame_indices"] == expected
    frames = read_video_frames(Path(plan["path"]), plan["frame_indices"])
    assert frames.shape == (len(expected), 48, 64, 3)
    assert [frame_index_from_pixels(frame) for frame in frames] == expected


# ---------------------------------------------------------------------------- grid verification


def _single_image_row(media, tokenizer, processor, line=3):
    builder = make_builder(tokenizer, processor, media)
    return prepare(builder, {"text": "a<image_no_1>b", "images": ["tall.png"]}, line)


def test_dropped_pad_token_is_grid_mismatch(media, tokenizer, processor):
    row = _single_image_row(media, tokenizer, processor)
    at = row["input_ids"].index(tid(tokenizer, "<|image_pad|>"))
    del row["input_ids"][at], row["labels"][at], row["attention_mask"][at]
    collator = QwenVLDataCollator(tokenizer, processor=processor)
    with pytest.raises(RecordError) as info:
        collator([row])
    assert info.value.reason is Reason.GRID_MISMATCH
    assert info.value.location == "data.jsonl:3"
    assert str(info.value).startswith("data.jsonl:3: grid_mismatch: ")
    assert "19 <|image_pad|>" in str(info.value) and "need 20" in str(info.value)


def test_tampered_plan_is_grid_mismatch(media, tokenizer, processor):
    row = _single_image_row(media, tokenizer, processor)
    plans = json.loads(row["qwenvl_media"])
    plans[0]["num_pads"] += 1
    row["qwenvl_media"] = json.dumps(plans)
    with pytest.raises(RecordError) as info:
        QwenVLDataCollator(tokenizer, processor=processor)([row])
    assert info.value.reason is Reason.GRID_MISMATCH
    assert "data.jsonl:3" in str(info.value)


def test_consistent_but_wrong_pads_caught_by_processor_grid(media, tokenizer, processor):
    """Plan and ids agree with each other (21 pads) but not with the image: the grid check catches it."""
    row = _single_image_row(media, tokenizer, processor)
    plans = json.loads(row["qwenvl_media"])
    plans[0]["num_pads"] = 21
    row["qwenvl_media"] = json.dumps(plans)
    at = row["input_ids"].index(tid(tokenizer, "<|image_pad|>"))
    row["input_ids"].insert(at, tid(tokenizer, "<|image_pad|>"))
    row["labels"].insert(at, IGNORE_INDEX)
    row["attention_mask"].insert(at, 1)
    with pytest.raises(RecordError) as info:
        QwenVLDataCollator(tokenizer, processor=processor)([row])
    message = str(info.value)
    assert info.value.reason is Reason.GRID_MISMATCH
    assert message.startswith("data.jsonl:3: grid_mismatch: ")
    assert "made 20 vision tokens (grid [1, 10, 8])" in message and "prepared with 21" in message
    assert "marker <image_no_1>" in message


def test_video_plan_with_changed_pixel_budget_is_grid_mismatch(mixed_rows, tokenizer, processor):
    row = json.loads(json.dumps(mixed_rows[2]))
    plans = json.loads(row["qwenvl_media"])
    plans[0]["min_pixels"] = 4 * 3136  # frames are now upscaled: a bigger grid than the 12 pads
    row["qwenvl_media"] = json.dumps(plans)
    with pytest.raises(RecordError) as info:
        QwenVLDataCollator(tokenizer, processor=processor)([row])
    assert info.value.reason is Reason.GRID_MISMATCH
    assert "data.jsonl:3" in str(info.value) and "marker <video_no_1>" in str(info.value)


# -------------------------------------------------------------------------- missing media files


@pytest.fixture
def own_media(tmp_path):
    return _write_media(tmp_path)


def _rows_with_deleted_file(own_media, tokenizer, processor):
    builder = make_builder(tokenizer, processor, own_media)
    good = prepare(builder, {"text": "x<image_no_1>", "images": ["small.png"]}, 1)
    bad = prepare(builder, {"text": "y<image_no_1>z", "images": ["tall.png"]}, 2)
    also_good = prepare(builder, {"text": "w<video_no_1>", "videos": ["v10.mp4"]}, 3)
    (own_media / "tall.png").unlink()
    return good, bad, also_good


def test_deleted_file_at_collate_time_raises(own_media, tokenizer, processor):
    good, bad, also_good = _rows_with_deleted_file(own_media, tokenizer, processor)
    collator = QwenVLDataCollator(tokenizer, processor=processor)
    with pytest.raises(RecordError) as info:
        collator([good, bad, also_good])
    assert info.value.reason is Reason.MISSING_FILE
    assert info.value.location == "data.jsonl:2"
    message = str(info.value)
    assert message.startswith("data.jsonl:2: missing_file: ")
    assert "marker <image_no_1>" in message and "tall.png" in message
    assert collator.skipped == Counter()


def test_deleted_file_skipped_under_skip_policy(own_media, tokenizer, processor):
    good, bad, also_good = _rows_with_deleted_file(own_media, tokenizer, processor)
    collator = QwenVLDataCollator(tokenizer, processor=processor, on_bad_record="skip")
    batch = collator([good, bad, also_good])
    assert collator.skipped == Counter({"missing_file": 1})
    reference = QwenVLDataCollator(tokenizer, processor=processor)([good, also_good])
    assert set(batch) == set(reference)
    for key in reference:
        assert torch.equal(batch[key], reference[key]), key
    assert batch["input_ids"].shape[0] == 2
    assert batch["input_ids"][0, : len(good["input_ids"])].tolist() == good["input_ids"]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert batch["video_grid_thw"].tolist() == [[3, 4, 4]]

    # A batch in which every record is bad cannot be returned at all.
    with pytest.raises(RecordError):
        collator([bad])
    assert collator.skipped == Counter({"missing_file": 2})


# ------------------------------------------------------------------------------- model forward


def test_forward_backward_on_mixed_batch(model, mixed_batch):
    model.zero_grad()
    out = model(**mixed_batch)
    assert torch.isfinite(out.loss)
    # The loss is the mean next-token cross entropy over exactly the trained labels.
    logits = out.logits[:, :-1].float()
    targets = mixed_batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-4)
    out.loss.backward()
    vision_grad = model.model.visual.patch_embed.proj.weight.grad
    language_grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    for grad in (vision_grad, language_grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    model.zero_grad()


def test_mrope_temporal_positions_follow_second_per_grid_ts(model, mixed_batch, tokenizer):
    batch = mixed_batch
    rope_inputs = dict(
        input_ids=batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        video_grid_thw=batch["video_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    ours, _ = model.model.get_rope_index(second_per_grid_ts=batch["second_per_grid_ts"], **rope_inputs)
    naive, _ = model.model.get_rope_index(second_per_grid_ts=torch.tensor([2 / 24, 2 / 24]), **rope_inputs)
    video = batch["input_ids"][2] == tid(tokenizer, "<|video_pad|>")
    temporal_ours, temporal_naive = ours[0, 2][video], naive[0, 2][video]
    assert not torch.equal(temporal_ours, temporal_naive)
    # First clip: 3 temporal groups of 2x2 tokens, spaced by tokens_per_second * 1.0 s = 2 positions.
    first = temporal_ours[:12] - temporal_ours[0]
    assert first.tolist() == [0] * 4 + [2] * 4 + [4] * 4
    assert (temporal_naive[:12] == temporal_naive[0]).all()
    # Images are unaffected, and height/width positions are the same either way.
    assert torch.equal(ours[:, :2], naive[:, :2])
    assert torch.equal(ours[1:], naive[1:])

    # The forward pass itself consumes them: logits change with second_per_grid_ts.
    with torch.no_grad():
        logits = model(**batch).logits
        altered = model(**{**batch, "second_per_grid_ts": torch.tensor([2 / 24, 2 / 24])}).logits
        no_types = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert torch.equal(logits[:2], altered[:2])
    assert not torch.allclose(logits[2], altered[2])
    # Without mm_token_type_ids the model silently falls back to 1D positions: different logits.
    assert not torch.allclose(logits, no_types)


# ---------------------------------------------------------------------------------- pickling


def test_collator_pickles_and_reloads_processor(mixed_rows, mixed_batch, tokenizer, tiny_model_dir):
    collator = QwenVLDataCollator(tokenizer, processor_source=str(tiny_model_dir))
    first = collator(mixed_rows)
    assert collator._processor is not None
    clone = pickle.loads(pickle.dumps(collator))
    assert clone._processor is None  # workers reload it rather than unpickling it
    assert clone.processor_source == str(tiny_model_dir)
    second = clone(mixed_rows)
    assert set(first) == set(second) == set(mixed_batch)
    for key in first:
        assert torch.equal(first[key], second[key]), key
        assert torch.equal(first[key], mixed_batch[key]), key


def test_collator_needs_a_processor(tokenizer):
    with pytest.raises(ValueError, match="processor"):
        QwenVLDataCollator(tokenizer)


def test_record_error_pickles_with_location():
    error = RecordError(Reason.GRID_MISMATCH, "bad", marker="<image_no_1>", path="a.png", location="d.jsonl:2")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.reason, clone.location, str(clone)) == (error.reason, error.location, str(error))


# ------------------------------------------------------------------ media-free batches (multi-GPU)
# A batch without media skips the vision tower; under DDP/ZeRO-3/FSDP the other ranks then wait
# for it. Such a batch gets a masked one-token placeholder image; none of this may change the loss.

TEXT_ONLY_RECORDS = [
    {"text": "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."},
    {"prompt": "Question: how many?", "completion": " Three."},
    {
        "messages": [
            {"role": "user", "content": "Describe the picture."},
            {"role": "assistant", "content": "A red square on a blue background."},
        ]
    },
]


@pytest.fixture(scope="module")
def text_rows(media, tokenizer, processor):
    builder = make_builder(tokenizer, processor, media)
    rows = [prepare(builder, record, line) for line, record in enumerate(TEXT_ONLY_RECORDS, start=10)]
    assert all(json.loads(row["qwenvl_media"] or "[]") == [] for row in rows)
    return rows


@pytest.fixture
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_world_size() == 1


def collate(tokenizer, processor, rows, mode, **kwargs):
    return QwenVLDataCollator(tokenizer, processor=processor, pad_media_free_batches=mode, **kwargs)(rows)


def test_media_free_batch_left_alone_on_one_process(text_rows, tokenizer, processor, single_process):
    default = QwenVLDataCollator(tokenizer, processor=processor)(text_rows)
    never = collate(tokenizer, processor, text_rows, "never")
    assert set(default) == set(never) == {"input_ids", "attention_mask", "labels", "mm_token_type_ids"}
    for key in default:
        assert torch.equal(default[key], never[key]), key


@pytest.mark.parametrize(
    "mode, world_size, padded",
    [("auto", "2", True), ("auto", "1", False), ("never", "2", False), ("always", "1", True), ("always", "2", True)],
)
def test_when_the_placeholder_is_added(text_rows, tokenizer, processor, monkeypatch, mode, world_size, padded):
    monkeypatch.setenv("WORLD_SIZE", world_size)  # what torchrun / accelerate launch set in every rank
    batch = collate(tokenizer, processor, text_rows, mode)
    assert ("pixel_values" in batch) is padded
    assert ("image_grid_thw" in batch) is padded


def test_placeholder_layout(text_rows, tokenizer, processor, single_process):
    plain = collate(tokenizer, processor, text_rows, "never")
    batch = collate(tokenizer, processor, text_rows, "always")
    lengths = [len(row["input_ids"]) for row in text_rows]
    shortest = lengths.index(min(lengths))
    placeholder = [tid(tokenizer, "<|vision_start|>"), tid(tokenizer, "<|image_pad|>"), tid(tokenizer, "<|vision_end|>")]

    # One 28x28 image, one vision token, exactly what the processor makes of a blank 28x28 image.
    expected = blank_image_inputs(processor)
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2]] == expected["image_grid_thw"].tolist()
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert "pixel_values_videos" not in batch and "video_grid_thw" not in batch

    width = max(max(lengths), lengths[shortest] + len(placeholder))
    assert batch["input_ids"].shape == (len(text_rows), width)
    for row, n in enumerate(lengths):
        # Every real token, label and mask is untouched.
        for key in ("input_ids", "labels", "attention_mask", "mm_token_type_ids"):
            assert torch.equal(batch[key][row, :n], plain[key][row, :n]), (key, row)
        tail = slice(n, n + len(placeholder))
        if row == shortest:
            assert batch["input_ids"][row, tail].tolist() == placeholder  # right after the last real token
            assert batch["mm_token_type_ids"][row, tail].tolist() == [0, 1, 0]  # types follow the ids
        else:
            assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    # The placeholder's pads are the batch's only image tokens, and the model finds them by id.
    assert pad_runs(batch["input_ids"].flatten(), tid(tokenizer, "<|image_pad|>")) == [1]


def test_placeholder_widens_a_full_batch_and_respects_pad_to_multiple_of(text_rows, tokenizer, processor, single_process):
    row = text_rows[0]
    n = len(row["input_ids"])
    assert collate(tokenizer, processor, [row], "always")["input_ids"].shape == (1, n + 3)
    batch = collate(tokenizer, processor, [row], "always", pad_to_multiple_of=64)
    assert batch["input_ids"].shape == (1, math.ceil((n + 3) / 64) * 64)
    assert batch["attention_mask"].sum().item() == n


def test_batch_with_media_never_gets_a_placeholder(mixed_rows, mixed_batch, tokenizer, processor):
    for rows in (mixed_rows, mixed_rows[2:]):  # images and videos; videos only
        batch = collate(tokenizer, processor, rows, "always")
        reference = collate(tokenizer, processor, rows, "never")
        assert set(batch) == set(reference)
        for key in reference:
            assert torch.equal(batch[key], reference[key]), key


def test_placeholder_is_made_once_and_not_pickled(text_rows, tokenizer, tiny_model_dir, single_process):
    collator = QwenVLDataCollator(tokenizer, processor_source=str(tiny_model_dir), pad_media_free_batches="always")
    first = collator(text_rows)
    made = collator._placeholder
    assert made is not None
    collator(text_rows)
    assert collator._placeholder is made
    clone = pickle.loads(pickle.dumps(collator))
    assert clone._placeholder is None and clone.pad_media_free_batches == "always"
    second = clone(text_rows)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_pad_media_free_batches_setting():
    assert QwenVLConfig().pad_media_free_batches == "auto"
    assert QwenVLConfig(pad_media_free_batches="never").pad_media_free_batches == "never"
    with pytest.raises(ValueError, match="pad_media_free_batches"):
        QwenVLConfig(pad_media_free_batches="sometimes")
    with pytest.raises(ValueError, match="pad_media_free_batches"):
        QwenVLDataCollator(object(), processor=object(), pad_media_free_batches="sometimes")
    # The collator takes the setting as the config holds it, enum or string.
    from axolotl_qwenvl_plugin.args import MediaFreeBatchPadding

    collator = QwenVLDataCollator(object(), processor=object(), pad_media_free_batches=MediaFreeBatchPadding.NEVER)
    assert collator.pad_media_free_batches == "never"


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """Vision and language LoRA (`finetune_vision_layers: true`), with non-zero B so every factor gets a gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from axolotl_qwenvl_plugin.loading import lora_target_regex

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, target_modules=lora_target_regex(True, True, True, True))
    model = get_peft_model(base, config)
    model.train()
    return model


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out, grads


def test_placeholder_changes_neither_loss_nor_gradients(lora_model, text_rows, tokenizer, processor, single_process):
    plain = collate(tokenizer, processor, text_rows, "never")
    padded = collate(tokenizer, processor, text_rows, "always")
    out_plain, grads_plain = loss_and_grads(lora_model, plain)
    out_padded, grads_padded = loss_and_grads(lora_model, padded)

    assert torch.isfinite(out_plain.loss)
    assert out_padded.loss.item() == pytest.approx(out_plain.loss.item(), rel=1e-6, abs=1e-6)
    # The logits of every real token are the same (positions, attention and embeddings unchanged).
    for row, n in enumerate(plain["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(out_padded.logits[row, :n], out_plain.logits[row, :n], rtol=1e-5, atol=1e-5)

    vision = sorted(name for name in grads_plain if ".visual." in name)
    language = sorted(name for name in grads_plain if ".visual." not in name)
    assert vision and language and all("lora_" in name for name in vision + language)
    for name in language:
        assert grads_plain[name] is not None and grads_plain[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_padded[name], grads_plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # What DDP needs: without the placeholder the vision LoRA gets no gradient at all (the
    # parameters did not take part in the step); with it every one has a gradient, exactly zero.
    assert all(grads_plain[name] is None for name in vision)
    for name in vision:
        assert grads_padded[name] is not None, name
        assert torch.count_nonzero(grads_padded[name]) == 0, name


def test_placeholder_keeps_mrope_positions_of_real_tokens(lora_model, text_rows, tokenizer, processor, single_process):
    padded = collate(tokenizer, processor, text_rows, "always")
    # With an image grid in the batch, the model computes M-RoPE positions through get_rope_index,
    # which drops masked tokens: each real token keeps position i on all three axes, as in the 1-D
    # positions a text-only batch gets.
    positions, _ = lora_model.base_model.model.model.get_rope_index(
        padded["input_ids"],
        mm_token_type_ids=padded["mm_token_type_ids"],
        image_grid_thw=padded["image_grid_thw"],
        attention_mask=padded["attention_mask"],
    )
    for row, n in enumerate(padded["attention_mask"].sum(1).tolist()):
        assert positions[:, row, :n].tolist() == [list(range(n))] * 3, row

"""The preprocess stage: `RecordBuilder` turns one JSONL line into ids, labels and a media plan.

Expected token ids are built by hand, piece by piece, with the tokenizer; expected vision-pad counts
come straight from the processor (`image_processor(...)["image_grid_thw"]`, `video_processor(...)`),
never from the plugin's own budgeting code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from expected import process_planned_video
from media_factory import write_image, write_video
from PIL import Image

from axolotl_qwenvl_plugin.args import QwenVLConfig
from axolotl_qwenvl_plugin.records import IGNORE_INDEX, RecordBuilder

LOCATION = "data.jsonl:7"

# Small per-frame video budget for the 64x48 test clips: every frame becomes 56x56 (4 tokens/pair).
VIDEO_SETTINGS = dict(video_min_pixels=3136, video_max_pixels=4 * 3136)


# ------------------------------------------------------------------------------------ helpers


def make_builder(tokenizer, processor, media_dir, *, sequence_len=4096, train_on_inputs=False, **settings):
    return RecordBuilder(
        tokenizer=tokenizer,
        processor=processor,
        settings=QwenVLConfig(**settings),
        media_dir=Path(media_dir),
        sequence_len=sequence_len,
        train_on_inputs=train_on_inputs,
    )


def build_ok(builder, record: dict) -> dict:
    row = builder.build_line(json.dumps(record), LOCATION)
    assert row["qwenvl_error"] == "", row["qwenvl_error"]
    assert row["qwenvl_location"] == LOCATION
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert len(row["labels"]) == len(row["input_ids"])
    return row


def build_error(builder, line: str) -> dict:
    row = builder.build_line(line, LOCATION)
    assert row["qwenvl_error"], "expected an error row"
    assert row["input_ids"] == [] and row["labels"] == [] and row["attention_mask"] == []
    assert row["qwenvl_media"] == "[]"
    assert row["qwenvl_location"] == LOCATION
    error = json.loads(row["qwenvl_error"])
    assert error["location"] == LOCATION
    assert error["message"].startswith(f"{LOCATION}: {error['reason']}: ")
    return error


def toks(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def image_pads(processor, path, *, min_pixels=56 * 56, max_pixels=1280 * 28 * 28) -> int:
    """Pad count for an image, straight from the processor's own grid."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        grid = processor.image_processor(
            images=[image], return_tensors="pt", min_pixels=min_pixels, max_pixels=max_pixels
        )["image_grid_thw"]
    assert grid.shape == (1, 3)
    return int(grid.prod()) // 4


def image_span(tokenizer, n: int) -> list[int]:
    return (
        [special(tokenizer, "<|vision_start|>")]
        + [special(tokenizer, "<|image_pad|>")] * n
        + [special(tokenizer, "<|vision_end|>")]
    )


def video_span(tokenizer, n: int) -> list[int]:
    return (
        [special(tokenizer, "<|vision_start|>")]
        + [special(tokenizer, "<|video_pad|>")] * n
        + [special(tokenizer, "<|vision_end|>")]
    )


def masked(ids: list[int]) -> list[int]:
    return [IGNORE_INDEX] * len(ids)


def trained_runs(tokenizer, labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of trained (non -100) labels."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def plans_of(row) -> list[dict]:
    return json.loads(row["qwenvl_media"])


@pytest.fixture
def eos(tokenizer):
    assert tokenizer.eos_token == "<|endoftext|>"
    return tokenizer.eos_token


# ------------------------------------------------------------------------ masking, per shape


def test_text_record_token_by_token(tmp_path, tokenizer, processor, eos):
    image = write_image(tmp_path / "a.png", 100, 150)
    n = image_pads(processor, image)
    assert n == 20  # 150x100 -> 140x112 -> grid 1x10x8 -> 80 patches / 4
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path),
        {"text": "Lorem<image_no_1>ipsum", "images": ["a.png"]},
    )
    lorem, ipsum = toks(tokenizer, "Lorem"), toks(tokenizer, "ipsum" + eos)
    assert ipsum[-1] == tokenizer.eos_token_id
    span = image_span(tokenizer, n)
    assert row["input_ids"] == lorem + span + ipsum
    assert row["labels"] == lorem + masked(span) + ipsum
    (plan,) = plans_of(row)
    assert plan == {
        "kind": "image",
        "path": str(image.resolve()),
        "marker": "<image_no_1>",
        "num_pads": n,
        "min_pixels": 56 * 56,
        "max_pixels": 1280 * 28 * 28,
    }


def test_prompt_completion_masks_prompt(tmp_path, tokenizer, processor, eos):
    image = write_image(tmp_path / "a.png", 100, 150)
    n = image_pads(processor, image)
    record = {"prompt": "What is <image_no_1>?", "completion": "A cat.", "images": ["a.png"]}
    before, after = toks(tokenizer, "What is "), toks(tokenizer, "?")
    completion = toks(tokenizer, "A cat." + eos)
    span = image_span(tokenizer, n)

    row = build_ok(make_builder(tokenizer, processor, tmp_path), record)
    assert row["input_ids"] == before + span + after + completion
    assert row["labels"] == masked(before) + masked(span) + masked(after) + completion
    assert trained_runs(tokenizer, row["labels"]) == ["A cat." + eos]

    row = build_ok(make_builder(tokenizer, processor, tmp_path, train_on_inputs=True), record)
    assert row["input_ids"] == before + span + after + completion
    assert row["labels"] == before + masked(span) + after + completion  # vision still masked


def _expected_chat(tokenizer, messages, marker_spans: dict[str, list[int]]):
    """input_ids of the rendered template with each marker replaced by its vision span."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    ids: list[int] = []
    rest = rendered
    while True:
        positions = [(rest.find(m), m) for m in marker_spans if rest.find(m) >= 0]
        if not positions:
            ids += toks(tokenizer, rest)
            return rendered, ids
        at, marker = min(positions)
        ids += toks(tokenizer, rest[:at]) + marker_spans[marker]
        rest = rest[at + len(marker) :]


def test_messages_masks_everything_but_assistant_turns(tmp_path, tokenizer, processor):
    image = write_image(tmp_path / "a.png", 56, 56)
    n = image_pads(processor, image)
    assert n == 4
    messages = [
        {"role": "system", "content": "Sys prompt."},
        {"role": "user", "content": "Look<image_no_1> now"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "again <image_no_1>"},
        {"role": "assistant", "content": "A2"},
    ]
    row = build_ok(make_builder(tokenizer, processor, tmp_path), {"messages": messages, "images": ["a.png"]})
    rendered, expected_ids = _expected_chat(tokenizer, messages, {"<image_no_1>": image_span(tokenizer, n)})
    assert rendered.startswith("<|im_start|>system\nSys prompt.<|im_end|>\n")
    assert row["input_ids"] == expected_ids
    assert len(plans_of(row)) == 2

    ids, labels = row["input_ids"], row["labels"]
    im_start, im_end = special(tokenizer, "<|im_start|>"), special(tokenizer, "<|im_end|>")
    header = [im_start] + toks(tokenizer, "assistant\n")
    # Locate each assistant turn: header, content, <|im_end|>, "\n".
    starts = [i for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert len(starts) == 2
    trained = set()
    for start, content in zip(starts, ("A1", "A2")):
        body = start + len(header)
        content_ids = toks(tokenizer, content)
        assert ids[body : body + len(content_ids)] == content_ids
        end = body + len(content_ids)
        assert ids[end] == im_end
        assert labels[start:body] == masked(header)  # the header is never trained
        assert labels[body : end + 1] == content_ids + [im_end]  # content + <|im_end|> trained
        assert ids[end + 1 : end + 2] == toks(tokenizer, "\n")
        assert labels[end + 1] == IGNORE_INDEX  # the newline after <|im_end|> is not
        trained.update(range(body, end + 1))
    # Everything else (system, user turns, vision spans) is masked.
    assert all(labels[i] == IGNORE_INDEX for i in range(len(ids)) if i not in trained)
    assert trained_runs(tokenizer, labels) == ["A1<|im_end|>", "A2<|im_end|>"]
    assert "".join(trained_runs(tokenizer, labels)) == "A1<|im_end|>A2<|im_end|>"
    sys_ids = toks(tokenizer, "Sys prompt.")
    sys_at = next(i for i in range(len(ids)) if ids[i : i + len(sys_ids)] == sys_ids)
    assert labels[sys_at : sys_at + len(sys_ids)] == masked(sys_ids)


def test_messages_default_system_prompt_present_but_masked(tmp_path, tokenizer, processor):
    write_image(tmp_path / "a.png", 56, 56)
    messages = [
        {"role": "user", "content": "Describe <image_no_1>."},
        {"role": "assistant", "content": "A red square."},
    ]
    row = build_ok(make_builder(tokenizer, processor, tmp_path), {"messages": messages, "images": ["a.png"]})
    _, expected = _expected_chat(tokenizer, messages, {"<image_no_1>": image_span(tokenizer, 4)})
    assert row["input_ids"] == expected
    default = toks(tokenizer, "system\nYou are a helpful assistant.")
    ids = row["input_ids"]
    at = next((i for i in range(len(ids)) if ids[i : i + len(default)] == default), None)
    assert at == 1  # right after the first <|im_start|>
    assert row["labels"][: at + len(default)] == [IGNORE_INDEX] * (at + len(default))
    assert trained_runs(tokenizer, row["labels"]) == ["A red square.<|im_end|>"]


def test_messages_train_on_inputs_trains_all_text_but_not_vision(tmp_path, tokenizer, processor):
    write_image(tmp_path / "a.png", 56, 56)
    messages = [{"role": "user", "content": "Hi <image_no_1>"}, {"role": "assistant", "content": "Yo"}]
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path, train_on_inputs=True),
        {"messages": messages, "images": ["a.png"]},
    )
    vision = {special(tokenizer, t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")}
    for token, label in zip(row["input_ids"], row["labels"]):
        assert label == (IGNORE_INDEX if token in vision else token)


def test_marker_in_assistant_turn_is_masked_but_text_trained(tmp_path, tokenizer, processor):
    write_image(tmp_path / "a.png", 56, 56)
    messages = [{"role": "user", "content": "Draw"}, {"role": "assistant", "content": "Here<image_no_1>done"}]
    row = build_ok(make_builder(tokenizer, processor, tmp_path), {"messages": messages, "images": ["a.png"]})
    _, expected = _expected_chat(tokenizer, messages, {"<image_no_1>": image_span(tokenizer, 4)})
    assert row["input_ids"] == expected
    assert trained_runs(tokenizer, row["labels"]) == ["Here", "done<|im_end|>"]


def test_messages_starting_with_assistant_does_not_crash(tmp_path, tokenizer, processor):
    builder = make_builder(tokenizer, processor, tmp_path)
    row = builder.build_line(json.dumps({"messages": [{"role": "assistant", "content": "Hello"}]}), LOCATION)
    assert row["qwenvl_error"] == ""
    assert trained_runs(tokenizer, row["labels"]) == ["Hello<|im_end|>"]


def test_messages_empty_assistant_content_trains_only_end_token(tmp_path, tokenizer, processor):
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]
    row = build_ok(make_builder(tokenizer, processor, tmp_path), {"messages": messages})
    assert trained_runs(tokenizer, row["labels"]) == ["<|im_end|>"]


# ------------------------------------------------------------------------------------ markers


def test_adjacent_markers(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "small.png", 56, 56)
    write_image(tmp_path / "tall.png", 100, 150)
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path),
        {"text": "<image_no_1><image_no_2>", "images": ["small.png", "tall.png"]},
    )
    span1, span2 = image_span(tokenizer, 4), image_span(tokenizer, 20)
    assert row["input_ids"] == span1 + span2 + toks(tokenizer, eos)
    assert row["labels"] == masked(span1 + span2) + toks(tokenizer, eos)
    assert [(p["marker"], p["num_pads"], Path(p["path"]).name) for p in plans_of(row)] == [
        ("<image_no_1>", 4, "small.png"),
        ("<image_no_2>", 20, "tall.png"),
    ]


def test_repeated_marker_is_two_instances(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "a.png", 100, 150)
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path),
        {"text": "a<image_no_1>b<image_no_1>c", "images": ["a.png"]},
    )
    span = image_span(tokenizer, 20)
    expected = toks(tokenizer, "a") + span + toks(tokenizer, "b") + span + toks(tokenizer, "c" + eos)
    assert row["input_ids"] == expected
    plans = plans_of(row)
    assert len(plans) == 2 and plans[0] == plans[1]
    assert plans[0]["num_pads"] == 20
    assert row["input_ids"].count(special(tokenizer, "<|vision_start|>")) == 2


def test_multi_digit_marker_numbers(tmp_path, tokenizer, processor, eos):
    # Image k is 56 x 56k, so with min_pixels = one token it costs exactly 4k pads: numbers are visible.
    names = []
    for k in range(1, 13):
        write_image(tmp_path / f"i{k}.png", 56 * k, 56, seed=k)
        names.append(f"i{k}.png")
    order = [12, 1, 10, 2, 11, 3, 4, 5, 6, 7, 8, 9]
    text = " ".join(f"w{k}<image_no_{k}>" for k in order)
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path, image_min_pixels=28 * 28),
        {"text": text, "images": names},
    )
    plans = plans_of(row)
    assert [p["marker"] for p in plans] == [f"<image_no_{k}>" for k in order]
    assert [Path(p["path"]).name for p in plans] == [f"i{k}.png" for k in order]
    assert [p["num_pads"] for p in plans] == [4 * k for k in order]
    for k in order:
        assert image_pads(processor, tmp_path / f"i{k}.png", min_pixels=784) == 4 * k
    expected: list[int] = []
    for i, k in enumerate(order):
        expected += toks(tokenizer, ("" if i == 0 else " ") + f"w{k}") + image_span(tokenizer, 4 * k)
    expected += toks(tokenizer, eos)
    assert row["input_ids"] == expected


def test_non_ascii_text_around_markers(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "a.png", 56, 56)
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path),
        {"text": "日本語<image_no_1>café 🙂", "images": ["a.png"]},
    )
    before, after = toks(tokenizer, "日本語"), toks(tokenizer, "café 🙂" + eos)
    span = image_span(tokenizer, 4)
    assert row["input_ids"] == before + span + after
    assert row["labels"] == before + masked(span) + after
    assert tokenizer.decode(row["input_ids"][: len(before)]) == "日本語"
    assert tokenizer.decode(row["input_ids"][len(before) + len(span) :]) == "café 🙂" + eos


def test_image_template_resolves_markers(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "img_1.png", 56, 56)
    write_image(tmp_path / "img_2.png", 100, 150)
    row = build_ok(
        make_builder(tokenizer, processor, tmp_path, image_template="img_{n}.png"),
        {"text": "x<image_no_2>y<image_no_1>"},
    )
    plans = plans_of(row)
    assert [p["path"] for p in plans] == [
        str((tmp_path / "img_2.png").resolve()),
        str((tmp_path / "img_1.png").resolve()),
    ]
    span2, span1 = image_span(tokenizer, 20), image_span(tokenizer, 4)
    assert row["input_ids"] == toks(tokenizer, "x") + span2 + toks(tokenizer, "y") + span1 + toks(tokenizer, eos)


@pytest.mark.parametrize("literal", ["<|image_pad|>", "<|video_pad|>"])
def test_literal_vision_pad_token_in_text_is_rejected(tmp_path, tokenizer, processor, literal):
    builder = make_builder(tokenizer, processor, tmp_path)
    row = builder.build_line(json.dumps({"text": f"hello {literal} there"}), LOCATION)
    pad = special(tokenizer, literal)
    assert pad not in row["input_ids"]
    assert row["qwenvl_error"] and literal in json.loads(row["qwenvl_error"])["message"]


# ---------------------------------------------------------------------------------- budgeting

IMAGE_SIZES = [(56, 56), (100, 150), (640, 480), (1000, 200)]


@pytest.mark.parametrize("max_pixels", [16 * 28 * 28, 1280 * 28 * 28], ids=["small", "large"])
def test_image_pad_count_matches_processor_grid(tmp_path, tokenizer, processor, eos, max_pixels):
    builder = make_builder(tokenizer, processor, tmp_path, image_max_pixels=max_pixels)
    counts = {}
    for width, height in IMAGE_SIZES:
        name = f"{width}x{height}.png"
        write_image(tmp_path / name, width, height)
        row = build_ok(builder, {"text": "a<image_no_1>", "images": [name]})
        expected = image_pads(processor, tmp_path / name, max_pixels=max_pixels)
        (plan,) = plans_of(row)
        assert plan["num_pads"] == expected
        assert plan["max_pixels"] == max_pixels and plan["min_pixels"] == 56 * 56
        assert row["input_ids"].count(special(tokenizer, "<|image_pad|>")) == expected
        assert row["input_ids"] == toks(tokenizer, "a") + image_span(tokenizer, expected) + toks(tokenizer, eos)
        assert expected * 28 * 28 <= max_pixels
        counts[(width, height)] = expected
    if max_pixels == 16 * 28 * 28:
        assert counts[(640, 480)] <= 16 and counts[(1000, 200)] <= 16
        assert counts[(56, 56)] == 4
    else:
        # Known values for the default budget (processor's smart resize, 28-pixel tokens).
        assert counts == {(56, 56): 4, (100, 150): 20, (640, 480): 391, (1000, 200): 252}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "v10": write_video(folder / "v10.mp4", num_frames=30, fps=10, width=64, height=48),
        "v25": write_video(folder / "v25.mp4", num_frames=50, fps=25, width=64, height=48, seed=1),
    }


def _expected_frames(processor, total, fps, *, min_frames=4, max_frames=768, video_fps=2.0):
    from transformers.video_utils import VideoMetadata

    indices = processor.video_processor.sample_frames(
        VideoMetadata(total_num_frames=total, fps=fps, width=64, height=48),
        temporal_patch_size=2,
        min_frames=min_frames,
        max_frames=max_frames,
        fps=video_fps,
    )
    return [int(i) for i in indices]


def _video_pads(processor, path, plan, *, min_pixels, max_pixels):
    """Pad count from the video processor itself, on frames decoded at the plan's indices."""
    grid = process_planned_video(processor, path, plan, min_pixels=min_pixels, max_pixels=max_pixels)["video_grid_thw"]
    assert grid[0, 0] == len(plan["frame_indices"]) // 2
    return int(grid.prod()) // 4


@pytest.mark.parametrize(
    "clip, total, fps, frames, pads", [("v10", 30, 10.0, 6, 12), ("v25", 50, 25.0, 4, 8)]
)
def test_video_plan_matches_processor(clips, tokenizer, processor, eos, clip, total, fps, frames, pads):
    path = clips[clip]
    builder = make_builder(tokenizer, processor, path.parent, **VIDEO_SETTINGS)
    row = build_ok(builder, {"text": "v<video_no_1>", "videos": [path.name]})
    (plan,) = plans_of(row)
    assert plan["kind"] == "video" and plan["marker"] == "<video_no_1>"
    assert plan["total_frames"] == total
    assert plan["fps"] == pytest.approx(fps)
    expected_indices = _expected_frames(processor, total, fps)
    assert plan["frame_indices"] == expected_indices
    assert len(plan["frame_indices"]) == frames and frames % 2 == 0
    # Default whole-video budget is generous: the per-frame cap stays video_max_pixels.
    assert (plan["min_pixels"], plan["max_pixels"]) == (3136, 4 * 3136)
    expected_pads = _video_pads(processor, path, plan, min_pixels=3136, max_pixels=4 * 3136)
    assert plan["num_pads"] == expected_pads == pads  # (frames/2) x 2 x 2 tokens of a 56x56 frame
    assert row["input_ids"] == toks(tokenizer, "v") + video_span(tokenizer, pads) + toks(tokenizer, eos)
    assert row["labels"] == toks(tokenizer, "v") + masked(video_span(tokenizer, pads)) + toks(tokenizer, eos)


def test_video_total_pixels_shrinks_frames(clips, tokenizer, processor):
    path = clips["v10"]
    record = {"text": "<video_no_1>", "videos": [path.name]}
    base = dict(video_min_pixels=784, video_max_pixels=4 * 3136)
    loose = plans_of(build_ok(make_builder(tokenizer, processor, path.parent, **base), record))[0]
    tight_builder = make_builder(tokenizer, processor, path.parent, video_total_pixels=3 * 784, **base)
    tight = plans_of(build_ok(tight_builder, record))[0]
    assert loose["frame_indices"] == tight["frame_indices"] == [0, 5, 10, 15, 20, 25]
    assert loose["max_pixels"] == 4 * 3136
    # 3*784 pixels * 2 / 6 frames = 784 per frame, floored at 1.05 * video_min_pixels = 823.
    assert tight["max_pixels"] == 823 < 4 * 3136
    assert loose["num_pads"] == _video_pads(processor, path, loose, min_pixels=784, max_pixels=4 * 3136) == 12
    assert tight["num_pads"] == _video_pads(processor, path, tight, min_pixels=784, max_pixels=823) == 3


@pytest.mark.parametrize(
    "clip, limits, frames",
    [
        ("v10", dict(video_max_frames=4), 4),  # 6 at 2 fps, capped to 4
        ("v10", dict(video_max_frames=5), 4),  # capped to 5, then an even count
        ("v25", dict(video_min_frames=8), 8),  # 4 at 2 fps, raised to 8
        ("v10", dict(video_fps=0.5), 4),  # 1.5 frames at 0.5 fps, raised to min_frames 4
        ("v10", dict(video_fps=10.0), 30),  # every frame
    ],
)
def test_video_frame_count_clamping(clips, tokenizer, processor, clip, limits, frames):
    path = clips[clip]
    builder = make_builder(tokenizer, processor, path.parent, **VIDEO_SETTINGS, **limits)
    (plan,) = plans_of(build_ok(builder, {"text": "<video_no_1>", "videos": [path.name]}))
    total, fps = (30, 10.0) if clip == "v10" else (50, 25.0)
    settings = builder.settings
    assert plan["frame_indices"] == _expected_frames(
        processor,
        total,
        fps,
        min_frames=settings.video_min_frames,
        max_frames=settings.video_max_frames,
        video_fps=settings.video_fps,
    )
    assert len(plan["frame_indices"]) == frames
    assert plan["num_pads"] == (frames // 2) * 4


# ------------------------------------------------------------------------------------- errors


@pytest.fixture
def error_dir(tmp_path):
    media = tmp_path / "media"
    write_image(media / "a.png", 56, 56)
    write_image(media / "b.png", 56, 56)
    write_image(tmp_path / "outside.png", 56, 56)
    return media


ERROR_CASES = [
    ('{"text": "a"', "invalid_json", ["not valid JSON"]),
    ("   ", "empty_line", ["empty line"]),
    ("", "empty_line", ["empty line"]),
    ("[1, 2]", "wrong_type", ["JSON object", "list"]),
    ('{"foo": 1}', "unknown_shape", ["foo"]),
    ('{"text": "a", "prompt": "b", "completion": "c"}', "unknown_shape", ["ambiguous"]),
    ('{"prompt": "x"}', "missing_field", ["`completion`"]),
    ('{"completion": "x"}', "missing_field", ["`prompt`"]),
    ('{"text": 5}', "wrong_type", ["`text`", "int"]),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "missing_field", ["assistant"]),
    ('{"text": "<image_no_2>", "images": ["a.png"]}', "marker_out_of_range", ["marker <image_no_2>"]),
    ('{"text": "<image_no_1>", "images": ["a.png", "b.png"]}', "unused_media", ["<image_no_2>", "b.png"]),
    ('{"text": "<image_no_1>", "images": ["nope.png"]}', "missing_file", ["marker <image_no_1>", "path nope.png"]),
    ('{"text": "<video_no_1>", "videos": ["gone.mp4"]}', "missing_file", ["marker <video_no_1>", "path gone.mp4"]),
    ('{"text": "x <image_no_0>", "images": ["a.png"]}', "malformed_marker", ["<image_no_0>"]),
    ('{"text": "x <image_no_x>"}', "malformed_marker", ["<image_no_x>"]),
    ('{"text": "<image_no_1>"}', "no_media_source", ["<image_no_1>", "image_template"]),
    (
        '{"text": "<image_no_1>", "images": ["../outside.png"]}',
        "path_outside_media_dir",
        ["marker <image_no_1>", "../outside.png"],
    ),
]


@pytest.mark.parametrize("line, reason, fragments", ERROR_CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(ERROR_CASES)])
def test_error_rows(error_dir, tokenizer, processor, line, reason, fragments):
    error = build_error(make_builder(tokenizer, processor, error_dir), line)
    assert error["reason"] == reason
    for fragment in fragments:
        assert fragment in error["message"]


def test_outside_media_dir_allowed_by_setting(error_dir, tokenizer, processor):
    builder = make_builder(tokenizer, processor, error_dir, allow_outside_media_dir=True)
    row = build_ok(builder, {"text": "<image_no_1>", "images": ["../outside.png"]})
    assert plans_of(row)[0]["path"] == str((error_dir.parent / "outside.png").resolve())


def test_too_long_rejected_whole_with_counts(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "a.png", 100, 150)
    record = {"text": "Lorem<image_no_1>ipsum", "images": ["a.png"]}
    text_count = len(toks(tokenizer, "Lorem")) + len(toks(tokenizer, "ipsum" + eos))
    vision_count = 20 + 2
    total = text_count + vision_count

    exact = build_ok(make_builder(tokenizer, processor, tmp_path, sequence_len=total), record)
    assert len(exact["input_ids"]) == total

    for limit in (total - 1, len(toks(tokenizer, "Lorem")) + 5):  # the second cuts inside the vision span
        error = build_error(make_builder(tokenizer, processor, tmp_path, sequence_len=limit), json.dumps(record))
        assert error["reason"] == "too_long"
        assert f"{total} tokens ({text_count} text + {vision_count} vision)" in error["message"]
        assert f"sequence_len {limit}" in error["message"]


def test_too_long_counts_every_vision_span(clips, tokenizer, processor, eos):
    path = clips["v10"]
    builder = make_builder(tokenizer, processor, path.parent, sequence_len=10, **VIDEO_SETTINGS)
    line = json.dumps({"text": "a<video_no_1>b<video_no_1>", "videos": [path.name]})
    error = build_error(builder, line)
    text_count = len(toks(tokenizer, "a")) + len(toks(tokenizer, "b")) + len(toks(tokenizer, eos))
    vision = 2 * (12 + 2)
    assert error["reason"] == "too_long"
    assert f"{text_count + vision} tokens ({text_count} text + {vision} vision)" in error["message"]


def test_builder_is_reusable_after_an_error(tmp_path, tokenizer, processor, eos):
    write_image(tmp_path / "a.png", 56, 56)
    builder = make_builder(tokenizer, processor, tmp_path)
    build_error(builder, '{"text": "<image_no_1>", "images": ["missing.png"]}')
    row = build_ok(builder, {"text": "<image_no_1>", "images": ["a.png"]})
    assert row["input_ids"] == image_span(tokenizer, 4) + toks(tokenizer, eos)


def test_changed_file_is_reprobed(tmp_path, tokenizer, processor):
    import os

    builder = make_builder(tokenizer, processor, tmp_path)
    path = write_image(tmp_path / "a.png", 56, 56)
    record = {"text": "<image_no_1>", "images": ["a.png"]}
    assert plans_of(build_ok(builder, record))[0]["num_pads"] == 4
    write_image(path, 100, 150)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # make sure mtime moves
    assert plans_of(build_ok(builder, record))[0]["num_pads"] == 20

"""Bad inputs through the training path: Axolotl's dataset strategy, the collator, DataLoader workers.

`check` (tests/test_check.py) and preprocessing must agree on the bad corpus: preprocessing drops or
refuses the same records, except the few whose damage only shows when pixels are decoded (truncated
images: their headers are intact), which the collator then drops (`skip`) or names (`error`). So
under `skip` training sees exactly the corpus's good records.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from bad_corpus import QWENVL_SETTINGS, SEQUENCE_LEN, STRATEGY, build_bad_corpus
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from expected import pad_runs
from media_factory import write_image, write_video

from axolotl_qwenvl_plugin.args import QwenVLConfig
from axolotl_qwenvl_plugin.collator import QwenVLDataCollator
from axolotl_qwenvl_plugin.errors import Reason, RecordError
from axolotl_qwenvl_plugin.records import IGNORE_INDEX, RecordBuilder

# ------------------------------------------------------------------------ preprocessing (Axolotl)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_bad_corpus(tmp_path_factory.mktemp("bad-inputs") / "corpus")


def prepare_with_axolotl_strategy(corpus, tokenizer, processor, cache_dir, *, policy: str):
    """What `axolotl preprocess` runs for `type: axolotl_qwenvl_plugin.marker_jsonl` on a .jsonl file."""
    import datasets
    from axolotl.utils.dict import DictDefault

    from axolotl_qwenvl_plugin import marker_jsonl

    cfg = DictDefault(
        {
            "qwenvl": {**QWENVL_SETTINGS, "on_bad_record": policy},
            "sequence_len": SEQUENCE_LEN,
            "train_on_inputs": False,
            "excess_length_strategy": None,
        }
    )
    # The plugin's register() turns `.jsonl` into `ds_type: text`: one row per line, line i+1 = row i.
    ds_cfg = {"path": str(corpus.data_file), "type": STRATEGY, "ds_type": "text"}
    strategy = marker_jsonl.load(tokenizer, cfg, ds_cfg, processor)
    lines = datasets.load_dataset("text", data_files=str(corpus.data_file), split="train", cache_dir=str(cache_dir))
    assert len(lines) == len(corpus.good_lines) + len(corpus.expected)  # the empty line is a row too
    return strategy.wrap_dataset(lines)


def test_skip_policy_trains_on_exactly_the_good_records(corpus, tokenizer, processor, tmp_path):
    prepared = prepare_with_axolotl_strategy(corpus, tokenizer, processor, tmp_path, policy="skip")
    kept = {row["qwenvl_location"]: row for row in prepared}
    # Preprocessing drops every bad record its header probes can see, and the too-long one...
    assert set(kept) == {corpus.location(n) for n in corpus.good_lines | corpus.decode_only}
    assert all(len(row["input_ids"]) <= SEQUENCE_LEN for row in kept.values())

    # ...and the collator drops the records whose pixels do not decode, counting them by reason.
    collator = QwenVLDataCollator(tokenizer, processor=processor, on_bad_record="skip")
    ordered = [kept[corpus.location(n)] for n in sorted(corpus.good_lines | corpus.decode_only)]
    batch = collator(ordered)
    assert collator.skipped == Counter({"truncated_image": len(corpus.decode_only)})
    good_rows = [kept[corpus.location(n)] for n in sorted(corpus.good_lines)]
    assert batch["input_ids"].shape[0] == len(good_rows)
    for index, row in enumerate(good_rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][index, :n].tolist() == row["input_ids"]
        assert batch["labels"][index, :n].tolist() == row["labels"]

    # The converted images (16-bit, CMYK, palette, alpha) went through the processor: one grid each,
    # matching the pads they were prepared with.
    plans = [plan for row in good_rows for plan in json.loads(row["qwenvl_media"])]
    image_plans = [plan for plan in plans if plan["kind"] == "image"]
    assert [int(grid.prod()) // 4 for grid in batch["image_grid_thw"]] == [p["num_pads"] for p in image_plans]
    converted_names = {"gray16.png", "cmyk.jpg", "palette.png", "alpha.png"}
    assert converted_names <= {Path(p["path"]).name for p in image_plans}
    assert len(batch["video_grid_thw"]) == 1


def test_error_policy_refuses_with_file_and_line(corpus, tokenizer, processor, tmp_path):
    from axolotl_qwenvl_plugin.marker_jsonl import MAX_LISTED_ERRORS, BadRecordsError

    with pytest.raises(BadRecordsError) as info:
        prepare_with_axolotl_strategy(corpus, tokenizer, processor, tmp_path, policy="error")
    message = str(info.value)
    assert "Traceback" not in message
    refused = corpus.bad_lines - corpus.decode_only
    total = len(corpus.good_lines) + len(corpus.expected)
    assert message.startswith(f"qwenvl: {len(refused)} bad record(s) of {total} found:\n")
    pattern = re.compile(rf"^  {re.escape(str(corpus.data_file))}:(\d+): ([a-z_]+): ", re.MULTILINE)
    listed = {int(line): reason for line, reason in pattern.findall(message)}
    assert len(listed) == min(len(refused), MAX_LISTED_ERRORS)
    assert listed == {line: corpus.expected[line] for line in sorted(refused)[: len(listed)]}
    if len(refused) > MAX_LISTED_ERRORS:
        assert f"... and {len(refused) - MAX_LISTED_ERRORS} more (run `axolotl-qwenvl check CONFIG` for all)" in message
    assert "on_bad_record: skip" in message


def test_error_policy_collator_names_a_truncated_image(corpus, tokenizer, processor, tmp_path):
    """The records only decoding can catch: under `error` the collator stops and names the record."""
    prepared = prepare_with_axolotl_strategy(corpus, tokenizer, processor, tmp_path, policy="skip")
    first = min(corpus.decode_only)
    row = next(row for row in prepared if row["qwenvl_location"] == corpus.location(first))
    with pytest.raises(RecordError) as info:
        QwenVLDataCollator(tokenizer, processor=processor)([row])
    assert info.value.reason is Reason.TRUNCATED_IMAGE
    assert str(info.value).startswith(f"{corpus.location(first)}: truncated_image: ")
    assert "(marker <image_no_1>, path " in str(info.value)


# ------------------------------------------------------------- media deleted after preprocessing


def _prepared_rows_then_delete(tmp_path, tokenizer, processor):
    media = tmp_path / "media"
    write_image(media / "a.png", 56, 56, seed=1)
    write_image(media / "doomed.png", 84, 56, seed=2)
    write_video(media / "v.mp4", num_frames=8, fps=4, width=64, height=48)
    builder = RecordBuilder(tokenizer, processor, QwenVLConfig(**QWENVL_SETTINGS), media, SEQUENCE_LEN)
    records = [
        {"text": "x<image_no_1>", "images": ["a.png"]},
        {"text": "y<image_no_1>z", "images": ["doomed.png"]},
        {"text": "w<video_no_1>", "videos": ["v.mp4"]},
    ]
    rows = [builder.build_line(json.dumps(r), f"data.jsonl:{n}") for n, r in enumerate(records, start=1)]
    for row in rows:
        assert row.pop("qwenvl_error") == ""
    (media / "doomed.png").unlink()  # between `axolotl preprocess` and `axolotl train`
    return rows


def _loader(rows, collator):
    return torch.utils.data.DataLoader(rows, batch_size=3, collate_fn=collator, num_workers=1)


def test_deleted_file_in_dataloader_worker_names_the_record(tmp_path, tokenizer, tiny_model_dir, processor):
    rows = _prepared_rows_then_delete(tmp_path, tokenizer, processor)
    # As the plugin builds it: by processor path, so the worker loads its own processor.
    collator = QwenVLDataCollator(tokenizer, processor_source=str(tiny_model_dir), on_bad_record="error")
    # torch re-raises a worker's exception in the main process as RuntimeError("Caught MediaError in
    # DataLoader worker process 0. Original Traceback ..."), since RecordError needs more than a message.
    with pytest.raises((RuntimeError, RecordError)) as info:
        next(iter(_loader(rows, collator)))
    message = str(info.value)
    assert "data.jsonl:2: missing_file: file does not exist" in message
    assert "(marker <image_no_1>, path " in message and "doomed.png" in message


def test_deleted_file_in_dataloader_worker_is_skipped(tmp_path, tokenizer, tiny_model_dir, processor):
    rows = _prepared_rows_then_delete(tmp_path, tokenizer, processor)
    collator = QwenVLDataCollator(tokenizer, processor_source=str(tiny_model_dir), on_bad_record="skip")
    (batch,) = list(_loader(rows, collator))
    assert batch["input_ids"].shape[0] == 2
    assert batch["input_ids"][0, : len(rows[0]["input_ids"])].tolist() == rows[0]["input_ids"]
    assert batch["input_ids"][1, : len(rows[2]["input_ids"])].tolist() == rows[2]["input_ids"]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] and batch["video_grid_thw"].shape == (1, 3)
    # The same collator in this process counts what it skips (a worker's counter stays in the worker).
    collator([rows[1]] + [rows[0]])
    assert collator.skipped == Counter({"missing_file": 1})


# ------------------------------------------------------------------------------- property test

# A pool of images of different shapes, written once: records draw from it at random.
POOL_SIZES = [(28, 28), (56, 56), (100, 80), (64, 200), (300, 120), (33, 77), (150, 150)]
PROPERTY_SETTINGS = QwenVLConfig(image_min_pixels=28 * 28, image_max_pixels=24 * 28 * 28)
SEQUENCE_LENS = [48, 96, 256]
# No "<": random text can then never form a marker or a literal vision token by accident.
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<", exclude_categories=("Cs", "Cc")), max_size=30)


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    for index, (width, height) in enumerate(POOL_SIZES):
        write_image(folder / f"p{index}.png", width, height, seed=index)
    return folder


@st.composite
def valid_records(draw) -> dict:
    """A valid record: 0-4 listed images, each used at least once, markers anywhere, repeats allowed."""
    images = draw(st.lists(st.sampled_from([f"p{i}.png" for i in range(len(POOL_SIZES))]), max_size=4))
    numbers = list(range(1, len(images) + 1))
    if images:
        numbers += draw(st.lists(st.integers(1, len(images)), max_size=2))  # repeats
    numbers = draw(st.permutations(numbers))
    texts = draw(st.lists(TEXT, min_size=len(numbers) + 1, max_size=len(numbers) + 1))
    body = texts[0] + "".join(f"<image_no_{n}>{text}" for n, text in zip(numbers, texts[1:]))
    record: dict = {"images": images} if images else {}
    shape = draw(st.sampled_from(["text", "prompt+completion", "messages"]))
    cut = draw(st.integers(0, len(body)))
    for marker in re.finditer(r"<image_no_\d+>", body):  # split between pieces, never inside a marker
        if marker.start() < cut < marker.end():
            cut = marker.start()
    if shape == "text":
        record["text"] = body
    elif shape == "prompt+completion":
        record.update(prompt=body[:cut], completion=body[cut:])
    else:
        record["messages"] = [{"role": "user", "content": body[:cut]}, {"role": "assistant", "content": body[cut:]}]
    return record


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(valid_records(), min_size=1, max_size=3), sequence_len=st.sampled_from(SEQUENCE_LENS))
def test_random_valid_records_give_exact_batches(records, sequence_len, image_pool, tokenizer, processor):
    builder = RecordBuilder(tokenizer, processor, PROPERTY_SETTINGS, image_pool, sequence_len)
    unbounded = RecordBuilder(tokenizer, processor, PROPERTY_SETTINGS, image_pool, 10**9)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    kept = []
    for number, record in enumerate(records, start=1):
        line = json.dumps(record)
        row = builder.build_line(line, f"p.jsonl:{number}")
        full = unbounded.build_line(line, f"p.jsonl:{number}")
        assert full["qwenvl_error"] == "", full["qwenvl_error"]  # every generated record is valid
        if row["qwenvl_error"]:
            # Over-long records are rejected whole, with their true length; never cut to fit.
            error = json.loads(row["qwenvl_error"])
            assert error["reason"] == "too_long"
            assert len(full["input_ids"]) > sequence_len
            assert f"{len(full['input_ids'])} tokens" in error["message"]
            event("record too long: rejected")
            continue
        assert row["input_ids"] == full["input_ids"] and len(row["input_ids"]) <= sequence_len
        markers = sum(len(re.findall(r"<image_no_\d+>", text)) for text in _texts(record))
        assert len(json.loads(row["qwenvl_media"])) == markers
        row.pop("qwenvl_error")
        kept.append(row)
        event(f"record kept with {min(markers, 3)}{'+' if markers >= 3 else ''} image(s)")
    if not kept:
        return

    batch = QwenVLDataCollator(tokenizer, processor=processor)(kept)
    grids = iter(batch["image_grid_thw"].tolist() if "image_grid_thw" in batch else [])
    for index, row in enumerate(kept):
        ids = batch["input_ids"][index]
        n = len(row["input_ids"])
        assert ids[:n].tolist() == row["input_ids"] and batch["attention_mask"][index].sum() == n
        # Each run of pads is one image; its length is what the processor's grid says, in order.
        for run in pad_runs(ids[:n], image_pad):
            t, h, w = next(grids)
            assert run == t * h * w // 4
        assert (batch["labels"][index][ids == image_pad] == IGNORE_INDEX).all()
    assert next(grids, None) is None  # no grid without pads


def _texts(record: dict) -> list[str]:
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    return [record[key] for key in ("text", "prompt", "completion") if key in record]



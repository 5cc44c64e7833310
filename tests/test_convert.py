"""`axolotl-qwenvl convert` / `export`: formats in, marker JSONL out, round trips, errors, and `check` on the result.

Everything runs on real files in tmp_path through the real functions; `cli.main` is called in-process.
"""

from __future__ import annotations

import json
import os
import re
import tracemalloc
from pathlib import Path

import pytest
from bad_corpus import marker_dataset, write_config
from media_factory import write_image, write_video

from axolotl_qwenvl_plugin import cli
from axolotl_qwenvl_plugin.errors import RecordError
from axolotl_qwenvl_plugin.convert import (
    ConvertError,
    MediaPaths,
    convert_record,
    to_openai,
    to_sharegpt,
    validate_marker_record,
)

# ------------------------------------------------------------------------------------ helpers


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are records (dumped as JSON) or raw strings (written as they are), one per line."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def problems(err: str, data: Path) -> dict[str, tuple[str, str]]:
    """{"LINE" or "record N": (reason, detail)} for every `  FILE:WHERE: reason: detail` line on stderr."""
    pattern = re.compile(rf"^  {re.escape(str(data))}:(record \d+|\d+): ([a-z_]+): (.*)$", re.MULTILINE)
    found = pattern.findall(err)
    assert len(found) == len({where for where, _, _ in found}), err
    return {where: (reason, detail) for where, reason, detail in found}


def marker(record: dict, fmt: str = "auto", paths: MediaPaths | None = None) -> dict:
    return convert_record(record, fmt, paths)[0]


# ------------------------------------------------------------------------------------ formats in

LLAVA = [
    {"id": "a", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the table?"},
        {"from": "gpt", "value": "A red mug."},
        {"from": "human", "value": "And behind it?"},
        {"from": "gpt", "value": "A window."},
    ]},
    {"id": "b", "image": ["coco/1.jpg", "coco/2.jpg", "coco/1.jpg"], "conversations": [
        {"from": "human", "value": "<image> <image> <image> Which two are the same?"},
        {"from": "gpt", "value": "The first and the third."},
    ]},
    # LLaVA-Video writes <image> for its video.
    {"id": "c", "video": "clips/dog.mp4", "conversations": [
        {"from": "human", "value": "<image>\nWhat does the dog do?"},
        {"from": "gpt", "value": "It runs."},
    ]},
    {"id": "d", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
]  # fmt: skip

LLAVA_EXPECTED = [
    {"messages": [
        {"role": "user", "content": "<image_no_1>\nWhat is on the table?"},
        {"role": "assistant", "content": "A red mug."},
        {"role": "user", "content": "And behind it?"},
        {"role": "assistant", "content": "A window."},
    ], "images": ["coco/1.jpg"]},
    {"messages": [
        {"role": "user", "content": "<image_no_1> <image_no_2> <image_no_1> Which two are the same?"},
        {"role": "assistant", "content": "The first and the third."},
    ], "images": ["coco/1.jpg", "coco/2.jpg"]},
    {"messages": [
        {"role": "user", "content": "<video_no_1>\nWhat does the dog do?"},
        {"role": "assistant", "content": "It runs."},
    ], "videos": ["clips/dog.mp4"]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
]  # fmt: skip


def test_llava_json_array_converts_exactly(tmp_path, capsys):
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(LLAVA, indent=1))
    status, out, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 0, err
    assert read_jsonl(tmp_path / "out.jsonl") == LLAVA_EXPECTED
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private 0600
    assert out == f"converted 4 records from {source} to {tmp_path / 'out.jsonl'}: 3 images, 1 video (read as llava 3, sharegpt 1)\n"
    # Marker JSONL as preprocessing reads it: one compact object per line, non-ASCII kept readable.
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 4


SHAREGPT = {
    "id": 7,
    "system": "You are terse.",
    "conversations": [
        {"from": "human", "value": "<image>Compare with <video>."},
        {"from": "gpt", "value": "The <image> shows less."},
        {"from": "human", "value": "And <image>, in café light?"},
        {"from": "gpt", "value": "Same as the first."},
    ],
    "images": ["a.jpg", "b.jpg", "a.jpg"],
    "videos": ["clip.mp4"],
}
SHAREGPT_EXPECTED = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "<image_no_1>Compare with <video_no_1>."},
        {"role": "assistant", "content": "The <image_no_2> shows less."},
        {"role": "user", "content": "And <image_no_1>, in café light?"},
        {"role": "assistant", "content": "Same as the first."},
    ],
    "images": ["a.jpg", "b.jpg"],
    "videos": ["clip.mp4"],
}
SHAREGPT_MESSAGES = {  # LLaMA-Factory's other sharegpt layout: role/content tags
    "messages": [
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "How many frames in <video>?"},
        {"role": "assistant", "content": "Eight."},
    ],
    "videos": "clips/count.mp4",  # one string is one file, as in LLaMA-Factory
}


def test_sharegpt_jsonl_converts_exactly(tmp_path, capsys):
    source = write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT, "", SHAREGPT_MESSAGES])  # blank lines are skipped
    status, out, err = run(capsys, "convert", source, tmp_path / "out.jsonl", "--from", "sharegpt")
    assert status == 0, err
    assert (tmp_path / "out.jsonl").read_text() == (
        json.dumps(SHAREGPT_EXPECTED, ensure_ascii=False)
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Count."},
                    {"role": "user", "content": "How many frames in <video_no_1>?"},
                    {"role": "assistant", "content": "Eight."},
                ],
                "videos": ["clips/count.mp4"],
            }
        )
        + "\n"
    )
    assert "2 images, 2 videos (read as sharegpt 2)" in out


OPENAI = {
    "messages": [
        {"role": "system", "content": "Describe media."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First "},
                {"type": "image_url", "image_url": {"url": "file:///data/pics/a%20b.jpg"}},
                {"type": "text", "text": " then "},
                {"type": "image", "image": "rel/c.png", "max_pixels": 50176},
                {"type": "video", "video": "clips/v.mp4"},
                {"type": "video_url", "video_url": {"url": "clips/w.mp4"}},
                {"type": "image_url", "image_url": "rel/c.png"},  # the same file again: the same marker
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ],
}
OPENAI_EXPECTED = {
    "messages": [
        {"role": "system", "content": "Describe media."},
        {"role": "user", "content": "First <image_no_1> then <image_no_2><video_no_1><video_no_2><image_no_2>"},
        {"role": "assistant", "content": "Done."},
    ],
    "images": ["/data/pics/a b.jpg", "rel/c.png"],
    "videos": ["clips/v.mp4", "clips/w.mp4"],
}
TRL_STYLE = {  # parts without a file take the record's `images` in order (TRL / HF datasets)
    "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What breed?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A collie, twice."}]},
    ],
    "images": ["dogs/1.jpg", "dogs/2.jpg"],
}
RESPONSES_STYLE = {
    "messages": [
        {"role": "user", "content": [{"type": "input_text", "text": "Read "}, {"type": "input_image", "image_url": "sign.png"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "STOP"}]},
    ]
}


def test_openai_content_lists_convert_exactly(tmp_path, capsys):
    source = write_jsonl(tmp_path / "openai.jsonl", [OPENAI, TRL_STYLE, RESPONSES_STYLE])
    status, out, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 0, err
    assert read_jsonl(tmp_path / "out.jsonl") == [
        OPENAI_EXPECTED,
        {
            "messages": [
                {"role": "user", "content": "<image_no_1>What breed?<image_no_2>"},
                {"role": "assistant", "content": "A collie, twice."},
            ],
            "images": ["dogs/1.jpg", "dogs/2.jpg"],
        },
        {
            "messages": [{"role": "user", "content": "Read <image_no_1>"}, {"role": "assistant", "content": "STOP"}],
            "images": ["sign.png"],
        },
    ]
    assert "read as openai 3" in out


def test_string_content_with_angle_brackets_is_plain_text_in_openai():
    record = {"messages": [{"role": "user", "content": "Is <image> a tag?"}, {"role": "assistant", "content": "Yes."}]}
    assert convert_record(record)[1] == "openai"
    assert marker(record) == record  # no media list: `<image>` is prose here, not a placeholder


def test_media_without_placeholders_go_first_in_the_first_user_turn(tmp_path, capsys):
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What happens?"},
            {"from": "gpt", "value": "A goal."},
        ],
        "images": ["a.jpg", "b.jpg"],
        "videos": ["match.mp4"],
    }
    source = write_jsonl(tmp_path / "in.jsonl", [record, record])
    status, _, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 0
    assert read_jsonl(tmp_path / "out.jsonl")[0] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<video_no_1><image_no_1><image_no_2>What happens?"},  # LLaMA-Factory's order
            {"role": "assistant", "content": "A goal."},
        ],
        "images": ["a.jpg", "b.jpg"],
        "videos": ["match.mp4"],
    }
    assert "note: 2 records had images but no <image> placeholder" in err and f"(first: {source}:1)" in err
    assert "note: 2 records had videos but no <video> placeholder" in err


# ------------------------------------------------------------------------------------ round trips


SHAREGPT_CANONICAL = [
    {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "<image>Compare with <video>."},
            {"from": "gpt", "value": "The <image> shows less."},
            {"from": "human", "value": "And <image>?"},
            {"from": "gpt", "value": "Same as the first."},
        ],
        "images": ["a.jpg", "b.jpg", "a.jpg"],
        "videos": ["clip.mp4"],
    },
    {"conversations": [{"from": "human", "value": "<video> and <video>"}, {"from": "gpt", "value": "Twice."}], "videos": ["v.mp4", "v.mp4"]},
    {"conversations": [{"from": "human", "value": "Text only."}, {"from": "gpt", "value": "Fine."}]},
]


@pytest.mark.parametrize("original", SHAREGPT_CANONICAL, ids=["mixed", "repeated-video", "text-only"])
def test_sharegpt_round_trip_is_exact(original):
    assert to_sharegpt(marker(original, "sharegpt")) == original


@pytest.mark.parametrize(
    "original, normalized",
    [
        (SHAREGPT, {key: value for key, value in SHAREGPT.items() if key not in ("id", "system")}
         | {"conversations": [{"from": "system", "value": "You are terse."}, *SHAREGPT["conversations"]]}),
        (SHAREGPT_MESSAGES, {"conversations": [{"from": "system", "value": "Count."},
                                               {"from": "human", "value": "How many frames in <video>?"},
                                               {"from": "gpt", "value": "Eight."}], "videos": ["clips/count.mp4"]}),
        ({"conversations": [{"from": "user", "value": "<image>"}, {"from": "assistant", "value": "ok"}], "images": ["x.png"]},
         {"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "ok"}], "images": ["x.png"]}),
    ],
    ids=["top-level-system", "messages-layout", "role-names-as-tags"],
)  # fmt: skip
def test_sharegpt_round_trip_normalizes(original, normalized):
    """System folds into the first turn, role/content becomes from/value, ids are dropped; nothing else changes."""
    assert to_sharegpt(marker(original, "sharegpt")) == normalized


OPENAI_CANONICAL = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "a.jpg"},
                    {"type": "text", "text": " and "},
                    {"type": "video", "video": "v.mp4"},
                    {"type": "text", "text": "?"},
                ],
            },
            {"role": "assistant", "content": "Both show a cat."},
            {"role": "user", "content": [{"type": "text", "text": "Again: "}, {"type": "image", "image": "a.jpg"}]},
            {"role": "assistant", "content": "Still a cat."},
        ]
    },
    {"messages": [{"role": "user", "content": "Plain <image> prose."}, {"role": "assistant", "content": "Sure."}]},
]


@pytest.mark.parametrize("original", OPENAI_CANONICAL, ids=["media", "text-only"])
def test_openai_round_trip_is_exact(original):
    assert to_openai(marker(original, "openai")) == original


def test_openai_round_trip_normalizes():
    """image_url / file:// / TRL parts / text lists come back as Qwen's own {"type": "image", "image": path} form."""
    assert to_openai(marker(OPENAI)) == {
        "messages": [
            {"role": "system", "content": "Describe media."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First "},
                    {"type": "image", "image": "/data/pics/a b.jpg"},
                    {"type": "text", "text": " then "},
                    {"type": "image", "image": "rel/c.png"},
                    {"type": "video", "video": "clips/v.mp4"},
                    {"type": "video", "video": "clips/w.mp4"},
                    {"type": "image", "image": "rel/c.png"},
                ],
            },
            {"role": "assistant", "content": "Done."},
        ]
    }
    assert to_openai(marker(TRL_STYLE))["messages"][0]["content"] == [
        {"type": "image", "image": "dogs/1.jpg"},
        {"type": "text", "text": "What breed?"},
        {"type": "image", "image": "dogs/2.jpg"},
    ]


def test_llava_to_marker_to_sharegpt_keeps_every_turn_and_image():
    for record in LLAVA:
        back = to_sharegpt(marker(record))
        turns = [(turn["from"], turn["value"]) for turn in record["conversations"]]
        if "video" in record:  # LLaVA-Video's <image> for its video comes back as the explicit <video>
            turns = [(role, value.replace("<image>", "<video>")) for role, value in turns]
        assert [(turn["from"], turn["value"]) for turn in back["conversations"]] == turns
        images = record.get("image") or []
        assert back.get("images", []) == (images if isinstance(images, list) else [images])
        assert back.get("videos", []) == ([record["video"]] if "video" in record else [])


@pytest.mark.parametrize("to, suffix", [("sharegpt", ".json"), ("openai", ".jsonl")])
def test_file_round_trip_through_the_cli_is_byte_identical(tmp_path, capsys, to, suffix):
    original = write_jsonl(tmp_path / "marker.jsonl", [*LLAVA_EXPECTED, SHAREGPT_EXPECTED, OPENAI_EXPECTED])
    exported = tmp_path / f"exported{suffix}"
    status, out, err = run(capsys, "export", original, exported, "--to", to)
    assert status == 0, err
    assert out.startswith(f"exported 6 records from {original} to {exported} as {to}: ")
    if suffix == ".json":
        assert isinstance(json.loads(exported.read_text()), list)  # a JSON array, as LLaMA-Factory / LLaVA keep it
    status, _, err = run(capsys, "convert", exported, tmp_path / "again.jsonl", "--from", to)
    assert status == 0, err
    assert (tmp_path / "again.jsonl").read_text() == original.read_text()


# ------------------------------------------------------------------------------------ errors

GOOD = {"conversations": [{"from": "human", "value": "<image> ok?"}, {"from": "gpt", "value": "ok"}], "images": ["a.jpg"]}


def _chat(*user_parts, **extra) -> dict:
    return {"messages": [{"role": "user", "content": list(user_parts)}, {"role": "assistant", "content": "x"}], **extra}


BAD_LINES = [
    # (line, reason, fragment of the detail)
    ({"conversations": [{"from": "human", "value": "<image><image> hi"}, {"from": "gpt", "value": "x"}], "images": ["a.jpg"]},
     "placeholder_mismatch", "2 <image> placeholder(s) in the conversation but 1 image(s) in `images`"),
    ({"conversations": [{"from": "human", "value": "<video> hi"}, {"from": "gpt", "value": "x"}]},
     "placeholder_mismatch", "1 <video> placeholder(s) in the conversation but 0 video(s) in `videos`"),
    (_chat({"type": "image"}, {"type": "text", "text": "hi"}, images=["a.jpg", "b.jpg"]),
     "placeholder_mismatch", "`images` lists 2 file(s) but 1 image part(s) without a file of their own take them"),
    ({"conversations": [{"from": "human", "value": "See <image_no_1>"}, {"from": "gpt", "value": "x"}], "images": ["a.jpg"]},
     "marker_in_source", "conversations[0].value already contains '<image_no_', which is the plugin's marker syntax"),
    (_chat({"type": "text", "text": "a <video_no_x> b"}),
     "marker_in_source", "messages[0].content[0].text already contains '<video_no_'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
     "unknown_role", "conversations[1].from is 'bot'; use one of human, user, gpt, assistant, system"),
    ({"messages": [{"role": "developer", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "unknown_role", "messages[0].role is 'developer'; use one of system, user, assistant"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"}]},
     "tool_turn", "conversations[1].from is a tool turn ('function_call')"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
     "tool_turn", "messages[1] carries `tool_calls`"),
    ({"conversations": []}, "empty_conversation", "`conversations` is empty"),
    ({"messages": []}, "empty_conversation", "`messages` is empty"),
    (_chat({"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}),
     "remote_media", "messages[0].content[0].image_url.url is a remote URL (https://example.com/a.jpg); the plugin reads media from disk"),
    ({"image": "http://example.com/a.jpg", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
     "remote_media", "`image` is a remote URL (http://example.com/a.jpg)"),
    (_chat({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}),
     "inline_media", "messages[0].content[0].image_url.url is an inline data: URL"),
    ('{"conversations": [{"from": "human"', "invalid_json", "not valid JSON"),
    ("[1, 2]", "wrong_type", "a line must be a JSON object, got a JSON list"),
    ({"id": 3, "caption": "a dog"}, "unknown_format", "no `conversations` or `messages` (keys: caption, id)"),
    ({"text": "already <image_no_1>", "images": ["a.jpg"]}, "unknown_format", "already the plugin's format: use it as it is"),
    ({"conversations": [{"from": "human", "value": "only a question"}]},
     "missing_field", "the converted record is refused by the plugin: `messages` has no assistant turn"),
    (_chat({"type": "input_audio", "input_audio": {"data": "..."}}),
     "unsupported_content", "messages[0].content[0] is a 'input_audio' part"),
    (_chat({"type": "video", "video": ["f1.jpg", "f2.jpg"]}), "unsupported_content", "is a list of frames"),
    ({"conversations": [{"from": "human", "value": "x <|image_pad|>"}, {"from": "gpt", "value": "y"}]},
     "vision_token_in_text", "contains the literal token <|image_pad|>"),
    ({"system": "A", "conversations": [{"from": "system", "value": "B"}, {"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
     "ambiguous_system", "both a top-level `system` and a different system turn"),
]  # fmt: skip


@pytest.fixture
def bad_file(tmp_path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """GOOD, every bad line, GOOD: returns the file and {line: (reason, fragment)}."""
    rows = [GOOD, *(line for line, _, _ in BAD_LINES), GOOD]
    expected = {str(number): (reason, fragment) for number, (_, reason, fragment) in enumerate(BAD_LINES, start=2)}
    return write_jsonl(tmp_path / "mixed.jsonl", rows), expected


def test_every_bad_record_is_listed_with_file_line_reason_and_nothing_is_written(bad_file, tmp_path, capsys):
    data, expected = bad_file
    out_path = tmp_path / "out.jsonl"
    out_path.write_text("previous contents\n")
    status, out, err = run(capsys, "convert", data, out_path)
    assert status == 1
    found = problems(err, data)
    assert set(found) == set(expected)  # every bad line, and no good line
    for line, (reason, fragment) in expected.items():
        assert found[line][0] == reason, (line, found[line])
        assert fragment in found[line][1], (line, found[line][1])
    assert out_path.read_text() == "previous contents\n"  # not replaced, not truncated
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left behind
    assert f"{len(expected)} bad records in {data}" in err and "pass --on-bad-record skip" in err
    assert out == f"{data}: {len(expected) + 2} records read, 2 ok, {len(expected)} bad records: {out_path} not written\n"


def test_skip_writes_the_good_records_and_lists_the_bad(bad_file, tmp_path, capsys):
    data, expected = bad_file
    out_path = tmp_path / "out.jsonl"
    status, out, err = run(capsys, "convert", data, out_path, "--on-bad-record", "skip")
    assert status == 0
    assert read_jsonl(out_path) == [marker(GOOD)] * 2
    assert set(problems(err, data)) == set(expected)
    assert f"{len(expected)} bad records in {data} (" in err and "): skipped" in err
    assert out == (
        f"converted 2 records from {data} to {out_path}: 2 images, 0 videos (read as sharegpt 2); "
        f"{len(expected)} bad records skipped\n"
    )

    status, _, err = run(capsys, "convert", data, out_path, "--on-bad-record", "skip", "--max-listed", "3")
    assert status == 0 and len(problems(err, data)) == 3
    assert f"... and {len(expected) - 3} more (raise --max-listed to list them)" in err


def test_json_array_errors_name_the_record(tmp_path, capsys):
    source = tmp_path / "data.json"
    source.write_text(json.dumps([GOOD, {"conversations": []}, GOOD, {"conversations": [{"from": "bot", "value": "x"}]}]))
    status, _, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 1
    found = problems(err, source)
    assert found.keys() == {"record 2", "record 4"}
    assert found["record 2"][0] == "empty_conversation" and found["record 4"][0] == "unknown_role"


def test_unparsable_json_array_names_its_line_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "data.json"
    source.write_text('[\n  {"conversations": []},\n  {"conversations": [}\n]\n')
    status, out, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 1
    assert f"axolotl-qwenvl convert: {source}:3: invalid_json: the file is not a valid JSON array" in err
    assert out == f"{source}: unreadable, {tmp_path / 'out.jsonl'} not written\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_invalid_utf8_line_is_one_bad_record(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"conversations": "caf\xe9"}\n')
    status, _, err = run(capsys, "convert", source, tmp_path / "out.jsonl", "--on-bad-record", "skip")
    assert status == 0
    assert problems(err, source) == {"2": ("invalid_json", "line is not valid UTF-8; re-save the file as UTF-8")}


def test_convert_record_raises_convert_error_without_location():
    with pytest.raises(ConvertError) as caught:
        convert_record({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]})
    assert caught.value.reason == "placeholder_mismatch" and caught.value.location is None
    assert str(caught.value.at("f.jsonl:9")).startswith("f.jsonl:9: placeholder_mismatch: 1 <image> placeholder(s)")


def test_validation_is_the_plugins_own():
    """The output check is records.parse_line + record_shape + markers: their reasons come through unchanged."""
    validate_marker_record(SHAREGPT_EXPECTED)
    with pytest.raises(RecordError) as caught:
        validate_marker_record({"messages": [{"role": "user", "content": "<image_no_2>"}, {"role": "assistant", "content": "x"}], "images": ["a.jpg"]})
    assert caught.value.reason.value == "marker_out_of_range"
    with pytest.raises(RecordError) as caught:
        validate_marker_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "images": ["a.jpg"]})
    assert caught.value.reason.value == "unused_media"


# ------------------------------------------------------------------------------------ media paths


def test_paths_are_kept_file_urls_unwrapped_and_media_root_rebases(tmp_path, capsys):
    (tmp_path / "raw" / "media").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    record = _chat(
        {"type": "image", "image": "cats/1.jpg"},
        {"type": "image_url", "image_url": {"url": f"file://{tmp_path}/abs%20dir/2.jpg"}},
        {"type": "image", "image": "/srv/3.jpg"},
    )
    source = write_jsonl(tmp_path / "raw" / "in.jsonl", [record])

    status, _, err = run(capsys, "convert", source, tmp_path / "data" / "kept.jsonl")
    assert status == 0
    assert read_jsonl(tmp_path / "data" / "kept.jsonl")[0]["images"] == ["cats/1.jpg", f"{tmp_path}/abs dir/2.jpg", "/srv/3.jpg"]
    assert "note: 1 record had relative media paths, kept as written" in err and "--media-root" in err

    # The raw paths were relative to raw/media; the output lives in data/: rewritten relative to data/.
    status, _, err = run(capsys, "convert", source, tmp_path / "data" / "rebased.jsonl", "--media-root", tmp_path / "raw" / "media")
    assert status == 0
    assert read_jsonl(tmp_path / "data" / "rebased.jsonl")[0]["images"] == [
        "../raw/media/cats/1.jpg", f"{tmp_path}/abs dir/2.jpg", "/srv/3.jpg",
    ]  # fmt: skip
    assert "note: 1 record had media paths outside the output's folder" in err

    paths = MediaPaths(out_dir=str(tmp_path / "data"), media_root=str(tmp_path / "data" / "media"))
    assert marker(record, paths=paths)["images"][0] == os.path.join("media", "cats", "1.jpg")


def test_check_media_reports_missing_files(tmp_path, capsys):
    write_image(tmp_path / "media" / "here.png", 28, 28)
    rows = [
        {"image": "media/here.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"image": "media/gone.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    status, _, err = run(capsys, "convert", source, tmp_path / "out.jsonl")
    assert status == 0  # existence is not checked unless asked
    status, _, err = run(capsys, "convert", source, tmp_path / "out.jsonl", "--check-media")
    assert status == 1
    reason, detail = problems(err, source)["2"]
    assert reason == "missing_file"
    assert f"images[0] 'media/gone.png' is not a file ({tmp_path / 'media' / 'gone.png'} does not exist)" in detail


# ------------------------------------------------------------------------------------ the CLI


def test_exit_status_2_for_usage_errors(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    cases = [
        (["convert", tmp_path / "missing.jsonl", tmp_path / "o.jsonl"], f"input file not found: {tmp_path / 'missing.jsonl'}"),
        (["convert", source, tmp_path / "o.json"], "the output must be a .jsonl file"),
        (["convert", source, source], "input and output are the same file"),
        (["convert", source, tmp_path / "nowhere" / "o.jsonl"], "the output's folder does not exist"),
        (["convert", source, tmp_path / "o.jsonl", "--media-root", tmp_path / "nope"], "--media-root is not a folder"),
        (["convert", source, tmp_path / "o.jsonl", "--max-listed", "-1"], "--max-listed must be >= 0"),
        (["export", source, tmp_path, "--to", "openai"], "is a folder; name the output file"),
    ]
    for argv, fragment in cases:
        status, out, err = run(capsys, *argv)
        assert status == 2, argv
        assert out == "" and err.count("\n") == 1 and err.startswith(f"axolotl-qwenvl {argv[0]}: error: "), err
        assert fragment in err
    # argparse's own usage errors come back as 2 as well
    assert cli.main(["export", str(source), str(tmp_path / "o.json")]) == 2
    assert "the following arguments are required: --to" in capsys.readouterr().err
    assert cli.main(["convert", str(source), str(tmp_path / "o.jsonl"), "--from", "alpaca"]) == 2
    assert "invalid choice: 'alpaca'" in capsys.readouterr().err
    assert cli.main(["convert", "--help"]) == 0
    assert "--media-root" in capsys.readouterr().out


def test_forced_format_refuses_records_of_another_format(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [OPENAI])
    status, _, err = run(capsys, "convert", source, tmp_path / "o.jsonl", "--from", "llava")
    assert status == 1
    assert problems(err, source)["1"][0] == "unknown_format" and "no `conversations` list" in err
    status, _, err = run(capsys, "convert", source, tmp_path / "o.jsonl", "--from", "sharegpt")
    assert status == 1
    assert "use --from openai or auto" in problems(err, source)["1"][1]


def test_export_errors_and_skip(tmp_path, capsys):
    rows = [
        OPENAI_EXPECTED,
        {"text": "plain <image_no_1>", "images": ["a.jpg"]},
        {"messages": [{"role": "user", "content": "What is <image>?"}, {"role": "assistant", "content": "A tag."}]},
        {"messages": [{"role": "user", "content": "<image_no_1>"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "x"}]},
        "",
    ]
    source = write_jsonl(tmp_path / "marker.jsonl", rows)
    status, out, err = run(capsys, "export", source, tmp_path / "out.jsonl", "--to", "sharegpt")
    assert status == 1 and not (tmp_path / "out.jsonl").exists()
    found = problems(err, source)
    assert {line: reason for line, (reason, _) in found.items()} == {
        "2": "unsupported_shape", "3": "placeholder_in_text", "4": "no_media_source", "5": "unsupported_shape", "6": "empty_line",
    }  # fmt: skip
    assert "would read as a media placeholder" in found["3"][1]
    assert "records that rely on `qwenvl.image_template` cannot be exported" in found["4"][1]

    status, out, err = run(capsys, "export", source, tmp_path / "out.jsonl", "--to", "openai", "--on-bad-record", "skip")
    assert status == 0
    assert problems(err, source).keys() == {"2", "4", "6"}  # literal <image> and a late system turn are fine in openai
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 3
    assert out.endswith("3 images, 2 videos; 3 bad records skipped\n")


def test_nothing_to_convert_is_status_1(tmp_path, capsys):
    source = tmp_path / "empty.jsonl"
    source.write_text("\n\n")
    status, out, _ = run(capsys, "convert", source, tmp_path / "o.jsonl")
    assert status == 1 and out == f"{source}: 0 records read, 0 ok, no record to write: {tmp_path / 'o.jsonl'} not written\n"


def test_jsonl_is_streamed_not_loaded(tmp_path, capsys):
    """The Python-heap peak for 10x the records stays flat: records are converted and written one at a time."""
    line = json.dumps({"image": "a.jpg", "conversations": [{"from": "human", "value": "<image> " + "word " * 40},
                                                           {"from": "gpt", "value": "answer " * 40}]})  # fmt: skip
    sources = {}
    for count in (100, 1_000):
        sources[count] = tmp_path / f"{count}.jsonl"
        sources[count].write_text((line + "\n") * count)
    run(capsys, "convert", sources[100], tmp_path / "warm.jsonl")  # imports and caches outside the measurement
    peaks = {}
    for count, source in sources.items():
        tracemalloc.start()
        status, _, _ = run(capsys, "convert", source, tmp_path / f"out{count}.jsonl")
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert status == 0
    # Holding the records would add ~0.45 KB x 900 as str alone (0.4 MB), several times that as dicts.
    assert peaks[1_000] - peaks[100] < 128 * 1024, peaks


# ------------------------------------------------------------------------------------ check on the result


def test_converted_file_passes_check(tmp_path, tiny_model_dir, capsys):
    """LLaVA and OpenAI-style inputs with real media convert into a file `axolotl-qwenvl check` passes."""
    media = tmp_path / "data" / "media"
    write_image(media / "cat.png", 64, 56, seed=1)
    write_image(media / "dog.jpg", 56, 56, seed=2)
    write_video(media / "clip.mp4", num_frames=8, fps=4, width=64, height=48, seed=3)
    raw = tmp_path / "raw"
    raw.mkdir()
    llava = raw / "llava.json"
    llava.write_text(json.dumps([
        {"id": 1, "image": "cat.png", "conversations": [{"from": "human", "value": "<image>\nWhat animal?"}, {"from": "gpt", "value": "A cat."}]},
        {"id": 2, "image": ["cat.png", "dog.jpg"], "conversations": [{"from": "human", "value": "<image> or <image>?"}, {"from": "gpt", "value": "Both."}]},
        {"id": 3, "video": "clip.mp4", "conversations": [{"from": "human", "value": "<image>\nCount."}, {"from": "gpt", "value": "Eight."}]},
    ]))  # fmt: skip
    openai = write_jsonl(raw / "openai.jsonl", [
        _chat({"type": "image_url", "image_url": {"url": "dog.jpg"}}, {"type": "text", "text": " vs "}, {"type": "video", "video": "clip.mp4"}),
        {"messages": [{"role": "system", "content": "Short answers."}, {"role": "user", "content": [{"type": "image"}]},
                      {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]},
    ])  # fmt: skip

    datasets = []
    for source in (llava, openai):
        target = tmp_path / "data" / f"{source.stem}.jsonl"
        status, _, err = run(capsys, "convert", source, target, "--media-root", media, "--check-media")
        assert status == 0, err
        datasets.append(marker_dataset(target))
    assert read_jsonl(tmp_path / "data" / "llava.jsonl")[1]["images"] == ["media/cat.png", "media/dog.jpg"]

    cfg = write_config(tmp_path / "data" / "cfg.yml", tiny_model_dir, datasets, sequence_len=512)
    status = cli.main(["check", str(cfg), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "records: 3 total, 3 ok, 0 bad, 0 too long" in out
    assert "records: 2 total, 2 ok, 0 bad, 0 too long" in out
    assert "media: 2 image(s) and 1 video(s) decoded" in out
    assert out.rstrip().endswith("result: OK")

"""A marker-JSONL corpus holding every bad input of issue 6, one per line, between good records.

    corpus = build_bad_corpus(tmp_path)
    corpus.data_file          # .../corpus/data.jsonl
    corpus.expected[12]       # "truncated_image": the reason category line 12 must be reported with
    corpus.good_lines         # lines that must come through as training records

Media live in `corpus/media/`; the data file's folder is the media directory (the default), so a
file in `outside/` (a sibling of `corpus/`) is outside it. Only `media_factory` writes media.

Which stage catches what: every bad line is caught by `axolotl-qwenvl check`. Preprocessing probes
media from their headers only, so the lines in `decode_only` (truncated images, whose headers are
intact) pass preprocessing and are caught when their pixels are decoded: by `check`, and by the
collator at training time. Every other bad line is caught by preprocessing already.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from media_factory import (
    write_audio_only_mp4,
    write_bomb_png,
    write_image,
    write_text_file,
    write_truncated,
    write_video,
)

STRATEGY = "axolotl_qwenvl_plugin.marker_jsonl"

# Small budgets keep every good record far below SEQUENCE_LEN: an image costs at most 16 pads,
# a 56x56 video frame pair 4 pads.
QWENVL_SETTINGS = {
    "loader": "transformers",
    "image_max_pixels": 16 * 28 * 28,
    "video_fps": 2.0,
    "video_min_pixels": 56 * 56,
    "video_max_pixels": 56 * 56,
}
SEQUENCE_LEN = 128
TOO_LONG_WORDS = 300  # ~300+ tokens of text: well over SEQUENCE_LEN

OK = "ok"


@dataclass
class BadCorpus:
    root: Path
    data_file: Path
    expected: dict[int, str]  # line number (1-based) -> reason value, for every bad line (too_long included)
    good_lines: set[int]
    decode_only: set[int]  # bad lines that only a full decode catches (see the module docstring)
    converted: dict[int, str] = field(default_factory=dict)  # good line -> image mode it converts from

    def location(self, line: int) -> str:
        return f"{self.data_file}:{line}"

    @property
    def bad_lines(self) -> set[int]:
        """Lines that are errors under `on_bad_record` (too-long records are dropped, not errors)."""
        return {line for line, reason in self.expected.items() if reason != "too_long"}


def write_media(root: Path) -> dict[str, Path]:
    """Every good and bad media file the corpus refers to; returns name -> path."""
    media = root / "media"
    outside = root.parent / f"{root.name}-outside"  # a sibling folder: outside the media directory
    files = {
        # good, 8-bit RGB
        "good.jpg": write_image(media / "good.jpg", 100, 80, seed=1),
        "good.png": write_image(media / "good.png", 64, 64, seed=2),
        "clip.mp4": write_video(media / "clip.mp4", num_frames=8, fps=4, width=64, height=48, seed=3),
        # good, but need converting to RGB
        "gray16.png": write_image(media / "gray16.png", 60, 40, mode="I;16"),
        "cmyk.jpg": write_image(media / "cmyk.jpg", 48, 48, mode="CMYK", seed=4),
        "palette.png": write_image(media / "palette.png", 56, 70, mode="P", seed=5),
        "alpha.png": write_image(media / "alpha.png", 70, 56, mode="RGBA", seed=6),
        # bad files
        "empty.jpg": _empty_file(media / "empty.jpg"),
        "text.jpg": write_text_file(media / "text.jpg", "this is a caption, not a JPEG\n"),
        "text.mp4": write_text_file(media / "text.mp4", "this is a transcript, not a video\n"),
        "audio.mp4": write_audio_only_mp4(media / "audio.mp4"),
        "one_frame.mp4": write_video(media / "one_frame.mp4", num_frames=1, fps=4, width=64, height=48),
        "bomb.png": write_bomb_png(media / "bomb.png"),
        # outside the media directory: a real image, so only the path rule can refuse it
        "secret.png": write_image(outside / "secret.png", 56, 56, seed=7),
    }
    # Truncated copies of real files: the header survives (so sizes probe fine), the pixel data does not.
    big_jpeg = write_image(root / "sources" / "big.jpg", 320, 240, seed=8)
    big_png = write_image(root / "sources" / "big.png", 320, 240, seed=9)
    files["truncated.jpg"] = write_truncated(big_jpeg, media / "truncated.jpg", keep_fraction=0.4)
    files["truncated.png"] = write_truncated(big_png, media / "truncated.png", keep_fraction=0.4)
    link = media / "link_out.png"
    os.symlink(files["secret.png"], link)  # inside media/ by name, outside by target
    files["link_out.png"] = link
    return files


def _empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def corpus_lines(files: dict[str, Path]) -> list[tuple[str, str]]:
    """(JSONL line, expected verdict) pairs: OK, or the Reason value the line must be reported with."""

    def rec(**record) -> str:
        return json.dumps(record)

    def image_rec(path: str, text: str = "Look at <image_no_1> here.") -> str:
        return rec(text=text, images=[path])

    def video_rec(path: str) -> str:
        return rec(text="Watch <video_no_1> now.", videos=[path])

    return [
        # -- good records, one per shape, and the convertible image modes
        (image_rec("media/good.jpg"), OK),
        (rec(prompt="What is in <image_no_1>?", completion=" A noise pattern.", images=["media/good.png"]), OK),
        (
            rec(
                messages=[
                    {"role": "user", "content": "Summarise <video_no_1>."},
                    {"role": "assistant", "content": "A counter counts."},
                ],
                videos=["media/clip.mp4"],
            ),
            OK,
        ),
        (image_rec("media/gray16.png"), OK),
        (image_rec("media/cmyk.jpg"), OK),
        (image_rec("media/palette.png"), OK),
        (image_rec("media/alpha.png"), OK),
        # Text that merely looks like markup is plain text (see markers.py): not an error.
        (rec(text="a < b, <image> and image_no_1 are plain text"), OK),
        # -- files
        (image_rec("media/missing.jpg"), "missing_file"),
        (image_rec("media/empty.jpg"), "empty_file"),
        (image_rec("media/truncated.jpg"), "truncated_image"),
        (image_rec("media/truncated.png"), "truncated_image"),
        (image_rec("media/text.jpg"), "not_an_image"),
        (video_rec("media/text.mp4"), "not_a_video"),
        (video_rec("media/audio.mp4"), "no_video_stream"),
        (video_rec("media/one_frame.mp4"), "too_few_frames"),
        # -- image limits
        (image_rec("media/bomb.png"), "image_too_large"),
        # -- markers
        (image_rec("media/good.jpg", "zero <image_no_0> then <image_no_1>"), "malformed_marker"),
        (image_rec("media/good.jpg", "<image_no_1> and <image_no_2>"), "marker_out_of_range"),
        (rec(text="only <image_no_1>", images=["media/good.jpg", "media/good.png"]), "unused_media"),
        (image_rec("media/good.jpg", "<image_no_1> and <image_no_> here"), "malformed_marker"),
        (image_rec("media/good.jpg", "<image_no_1> and <image_no_x> here"), "malformed_marker"),
        (image_rec("media/good.jpg", "<image_no_1 is never closed"), "malformed_marker"),
        # -- records
        (rec(prompt="<image_no_1> says what?", images=["media/good.jpg"]), "missing_field"),
        (rec(text="<image_no_1>", images="media/good.jpg"), "wrong_type"),
        ('{"text": "unterminated <image_no_1>", "images": ["media/good.jpg"]', "invalid_json"),
        ("", "empty_line"),
        (rec(caption="<image_no_1>", images=["media/good.jpg"]), "unknown_shape"),
        (image_rec("media/good.jpg", "<image_no_1> " + "word " * TOO_LONG_WORDS), "too_long"),
        # -- paths escaping the media directory
        (image_rec("../../etc/passwd"), "path_outside_media_dir"),
        (image_rec(str(files["secret.png"])), "path_outside_media_dir"),
        (image_rec("media/link_out.png"), "path_outside_media_dir"),
        # -- a good record after all the bad ones: nothing upstream leaks into it
        (rec(text="<image_no_1> twice: <image_no_1>", images=["media/good.png"]), OK),
    ]


DECODE_ONLY_REASONS = {"truncated_image"}
CONVERTED_MODES = {"gray16.png": "I;16", "cmyk.jpg": "CMYK", "palette.png": "P", "alpha.png": "RGBA"}


def build_bad_corpus(root: Path) -> BadCorpus:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = write_media(root)
    pairs = corpus_lines(files)
    data_file = root / "data.jsonl"
    data_file.write_text("\n".join(line for line, _ in pairs) + "\n")

    expected, good, converted = {}, set(), {}
    for number, (line, verdict) in enumerate(pairs, start=1):
        if verdict == OK:
            good.add(number)
            for name, mode in CONVERTED_MODES.items():
                if name in line:
                    converted[number] = mode
        else:
            expected[number] = verdict
    decode_only = {line for line, reason in expected.items() if reason in DECODE_ONLY_REASONS}
    return BadCorpus(root, data_file, expected, good, decode_only, converted)


def write_config(path: Path, model_dir: Path, datasets: list[dict], **overrides) -> Path:
    """An Axolotl YAML using the plugin, with the corpus's budgets; `qwenvl_overrides` merge into `qwenvl:`."""
    qwenvl = {**QWENVL_SETTINGS, **overrides.pop("qwenvl_overrides", {})}
    cfg = {
        "base_model": str(model_dir),
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"],
        "qwenvl": qwenvl,
        "datasets": datasets,
        "sequence_len": SEQUENCE_LEN,
        "adapter": "lora",
        **overrides,
    }
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def marker_dataset(data_file: Path | str) -> dict:
    return {"path": str(data_file), "type": STRATEGY}

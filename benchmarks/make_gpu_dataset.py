"""Write a GPU benchmark dataset: an overfit set of marker records sized to an exact token count
(text + vision), in one of two mixes.

    python benchmarks/make_gpu_dataset.py OUT_DIR [--mix video|image] [--records 4] [--repeat 20] [--tokens N]

* `video` (video-heavy, the issue-5 set): `text` records, each one 448x448 image plus one
  16-frame 336x336 video plus text, 2,654 tokens by default.
* `image` (image-only): `messages` records (a user turn with one 672x672 image and a question,
  an assistant answer), 1,100 tokens by default. It also writes `native.jsonl`, the same
  conversations in Axolotl's own multimodal format (content lists with
  `{"type": "image", "path": "@MEDIA@/imgK.jpg"}`; replace `@MEDIA@` with the absolute media folder
  on the machine that trains), for the Axolotl-native comparison path.

Runs on CPU (it needs PyAV to write H.264, which the GPU machine lacks): write it here, carry it
to the GPU machine (e.g. under the git-ignored `.gpu/`). The token count is the plugin's own
(RecordBuilder, with the Qwen2.5-VL processor of the offline builder: every `tiny.py` size shares
one tokenizer and processor), so the number is the same on the 3B model:

    image 448x448      -> (448/28)^2            = 256 <|image_pad|>
    image 672x672      -> (672/28)^2            = 576 <|image_pad|>
    video 16 x 336x336 -> (16/2) * (336/28)^2   = 1152 <|video_pad|>   (8 s at 2 fps, sampled at 2 fps)

Distinct records are repeated so that the loss can fall within a few dozen steps. Writes
OUT_DIR/train.jsonl, OUT_DIR/media/*, and OUT_DIR/dataset.json (counts per record).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

IMAGE_SIDE = 448
CAPTION_IMAGE_SIDE = 672
VIDEO_SIDE = 336
VIDEO_FRAMES = 16
VIDEO_FPS = 2
VIDEO_SAMPLE_FPS = 2.0

WORDS = (
    "the cat sat on mat red square blue background green circle next to yellow triangle quick "
    "brown fox jumps over lazy dog ball moves from left right then colour changes video picture "
    "image scene objects three how many question answer describe summarise lorem ipsum dolor sit "
    "amet consectetur adipiscing elit sed eiusmod tempor incididunt labore dolore magna aliqua"
).split()


def sentence_stream(seed: int):
    rng = random.Random(seed)
    while True:
        n = rng.randint(5, 12)
        words = [rng.choice(WORDS) for _ in range(n)]
        yield " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def render_video_mix(seed: int, n_sentences: int, k: int) -> dict:
    stream = sentence_stream(seed)
    sentences = [next(stream) for _ in range(n_sentences)]
    third = max(1, n_sentences // 3)
    text = (
        " ".join(sentences[:third]) + " <image_no_1> " + " ".join(sentences[third : 2 * third])
        + " <video_no_1> " + " ".join(sentences[2 * third :])
    )  # fmt: skip
    return {"text": text, "images": [f"media/img{k}.jpg"], "videos": [f"media/vid{k}.mp4"]}


QUESTION = "Describe this picture in detail."


def render_image_mix(seed: int, n_sentences: int, k: int) -> dict:
    stream = sentence_stream(seed)
    answer = " ".join(next(stream) for _ in range(n_sentences))
    return {"messages": [{"role": "user", "content": f"<image_no_1>{QUESTION}"},
                         {"role": "assistant", "content": answer}],
            "images": [f"media/cap{k}.jpg"]}  # fmt: skip


def grids(video_mix: bool) -> list[list[int]]:
    """(t, h, w) in 14-px ViT patches of each media item of a record (for FLOPs counting)."""
    if video_mix:
        return [[1, IMAGE_SIDE // 14, IMAGE_SIDE // 14], [VIDEO_FRAMES // 2, VIDEO_SIDE // 14, VIDEO_SIDE // 14]]
    return [[1, CAPTION_IMAGE_SIDE // 14, CAPTION_IMAGE_SIDE // 14]]


def native_record(record: dict) -> dict:
    """The same conversation in Axolotl's multimodal `chat_template` format (images only)."""
    user, assistant = record["messages"]
    image = record["images"][0].replace("media/", "@MEDIA@/", 1)
    return {"messages": [
        {"role": "user", "content": [{"type": "image", "path": image},
                                     {"type": "text", "text": user["content"].replace("<image_no_1>", "")}]},
        {"role": "assistant", "content": [{"type": "text", "text": assistant["content"]}]},
    ]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--records", type=int, default=4, help="distinct records")
    parser.add_argument("--repeat", type=int, default=20, help="copies of each record in train.jsonl")
    parser.add_argument("--mix", choices=("video", "image"), default="video")
    parser.add_argument("--tokens", type=int, default=None,
                        help="target tokens per record, text + vision (default 2654 video, 1100 image)")
    args = parser.parse_args(argv)
    video_mix = args.mix == "video"
    target = args.tokens or (2654 if video_mix else 1100)
    render = render_video_mix if video_mix else render_image_mix
    expected_pads = {"image": 256, "video": 1152} if video_mix else {"image": (CAPTION_IMAGE_SIDE // 28) ** 2}

    from media_factory import write_image, write_video
    from transformers import AutoProcessor

    from axolotl_qwenvl_plugin.args import QwenVLConfig
    from axolotl_qwenvl_plugin.records import RecordBuilder
    from axolotl_qwenvl_plugin.tiny import build

    out = Path(args.out_dir).resolve()
    (out / "media").mkdir(parents=True, exist_ok=True)
    for k in range(args.records):
        if video_mix:
            write_image(out / "media" / f"img{k}.jpg", IMAGE_SIDE, IMAGE_SIDE, seed=100 + k)
            write_video(out / "media" / f"vid{k}.mp4", num_frames=VIDEO_FRAMES, fps=VIDEO_FPS,
                        width=VIDEO_SIDE, height=VIDEO_SIDE, seed=200 + k)  # fmt: skip
        else:
            write_image(out / "media" / f"cap{k}.jpg", CAPTION_IMAGE_SIDE, CAPTION_IMAGE_SIDE, seed=300 + k)

    with tempfile.TemporaryDirectory() as tmp:
        processor = AutoProcessor.from_pretrained(build(Path(tmp) / "tiny", size="tiny"))
    settings = QwenVLConfig(video_fps=VIDEO_SAMPLE_FPS)
    builder = RecordBuilder(processor.tokenizer, processor, settings, media_dir=out, sequence_len=1 << 20)

    def count(record: dict) -> tuple[int, list[dict]]:
        row = builder.build_line(json.dumps(record), "gen")
        if row.get("qwenvl_error"):
            raise SystemExit(f"record failed to prepare: {row['qwenvl_error']}")
        return len(row["input_ids"]), json.loads(row["qwenvl_media"])

    records, stats = [], []
    for k in range(args.records):
        low, high = 3, 2000  # sentences; the largest count that stays within the target
        while low < high:
            mid = (low + high + 1) // 2
            if count(render(1000 + k, mid, k))[0] <= target:
                low = mid
            else:
                high = mid - 1
        record = render(1000 + k, low, k)
        # top up with single words to land on the target exactly (or just under it)
        rng = random.Random(k)
        while True:
            candidate = json.loads(json.dumps(record))
            if video_mix:
                candidate["text"] += " " + rng.choice(WORDS)
            else:
                candidate["messages"][1]["content"] += " " + rng.choice(WORDS)
            if count(candidate)[0] > target:
                break
            record = candidate
        n, plans = count(record)
        pads = {plan["kind"]: plan["num_pads"] for plan in plans}
        if pads != expected_pads:
            raise SystemExit(f"unexpected vision token counts {pads}; check the processor settings")
        records.append(record)
        stats.append({"record": k, "tokens": n, "image_pads": pads.get("image", 0), "video_pads": pads.get("video", 0),
                      "grids": grids(video_mix)})  # fmt: skip

    lines = [json.dumps(record) for _ in range(args.repeat) for record in records]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    if video_mix:
        media = {"image": f"{IMAGE_SIDE}x{IMAGE_SIDE}", "video": f"{VIDEO_FRAMES} frames {VIDEO_SIDE}x{VIDEO_SIDE} "
                 f"at {VIDEO_FPS} fps, sampled at {VIDEO_SAMPLE_FPS} fps"}  # fmt: skip
    else:
        media = {"image": f"{CAPTION_IMAGE_SIDE}x{CAPTION_IMAGE_SIDE}"}
        native = [json.dumps(native_record(record)) for _ in range(args.repeat) for record in records]
        (out / "native.jsonl").write_text("\n".join(native) + "\n")
    summary = {"mix": args.mix, "records": stats, "distinct": args.records, "repeat": args.repeat,
               "rows": len(lines), **media}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

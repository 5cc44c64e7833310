"""CPU benchmark: collator throughput for 448x448 image records and 16-frame video records.

    python benchmarks/collator_throughput.py [--records 32] [--batch 4]

Builds the tiny offline Qwen2.5-VL processor, writes the media, prepares records with the real
preprocess stage, then times the collator per batch. Decode time (file -> pixels) is measured
separately from the processor work, so it shows which of the two dominates. Numbers are one
CPU worker's; DataLoader workers scale them roughly linearly until the cores run out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media_factory import write_image, write_video  # noqa: E402


def prepare(builder, lines: list[str]) -> list[dict]:
    rows = [builder.build_line(line, f"bench.jsonl:{i + 1}") for i, line in enumerate(lines)]
    errors = [row["qwenvl_error"] for row in rows if row["qwenvl_error"]]
    if errors:
        raise SystemExit(f"benchmark records failed to prepare: {errors[:3]}")
    return rows


def time_decode(rows: list[dict]) -> float:
    from axolotl_qwenvl_plugin.media import load_image, read_video_frames

    start = time.perf_counter()
    for row in rows:
        for plan in json.loads(row["qwenvl_media"]):
            if plan["kind"] == "image":
                load_image(Path(plan["path"]))
            else:
                read_video_frames(Path(plan["path"]), plan["frame_indices"])
    return time.perf_counter() - start


def time_collate(collator, rows: list[dict], batch: int) -> float:
    collator(rows[:batch])  # warm-up: processor caches, first decode of each file
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        collator(rows[i : i + batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    import torch

    from axolotl_qwenvl_plugin.args import QwenVLConfig
    from axolotl_qwenvl_plugin.collator import QwenVLDataCollator
    from axolotl_qwenvl_plugin.records import RecordBuilder
    from axolotl_qwenvl_plugin.tiny import build

    torch.set_num_threads(1)  # one DataLoader worker's view
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build(root / "model", size="tiny")
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir)
        settings = QwenVLConfig(video_fps=2.0, video_min_frames=16, video_max_frames=16)
        builder = RecordBuilder(processor.tokenizer, processor, settings, media_dir=root, sequence_len=32768)
        for i in range(8):
            write_image(root / f"img{i}.jpg", 448, 448, seed=i)
            write_video(root / f"vid{i}.mp4", num_frames=64, fps=8, width=448, height=448, seed=i)
        workloads = {
            "image 448x448": [
                json.dumps({"text": f"Picture <image_no_1> number {i}.", "images": [f"img{i % 8}.jpg"]})
                for i in range(args.records)
            ],
            "video 16 frames 448x448": [
                json.dumps({"text": f"Clip <video_no_1> number {i}.", "videos": [f"vid{i % 8}.mp4"]})
                for i in range(args.records)
            ],
        }
        collator = QwenVLDataCollator(processor.tokenizer, processor=processor)
        print(f"{'workload':26} {'samples/s':>10} {'decode ms/sample':>17} {'total ms/sample':>16} {'decode share':>13}")
        for name, lines in workloads.items():
            rows = prepare(builder, lines)
            decode = time_decode(rows)
            total = time_collate(collator, rows, args.batch)
            n = len(rows)
            print(
                f"{name:26} {n / total:10.1f} {1000 * decode / n:17.1f} {1000 * total / n:16.1f} "
                f"{decode / total:12.0%}"
            )


if __name__ == "__main__":
    main()

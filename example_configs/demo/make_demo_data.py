"""Regenerate the embedded demo dataset (`data.jsonl` + `media/`) deterministically.

    python example_configs/demo/make_demo_data.py

The committed files are its output; rerun only to change the demo. Images are flat shapes of a
named colour and videos show a square moving one way, so the captions are learnable and the tiny
model visibly overfits them. All three record shapes appear, with images of several sizes and a
few short videos at two frame rates.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30)}
SHAPES = ("square", "circle")
IMAGE_SIZES = ((56, 56), (84, 56), (112, 84), (140, 112))


def draw_image(path: Path, colour: str, shape: str, size: tuple[int, int]) -> None:
    width, height = size
    image = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)


def write_video(path: Path, colour: str, direction: str, fps: int, num_frames: int) -> None:
    import av

    width, height = 64, 48
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = np.full((height, width, 3), 245, dtype=np.uint8)
            x = int((width - 16) * i / max(1, num_frames - 1))
            x = x if direction == "right" else width - 16 - x
            frame[16:32, x : x + 16] = COLOURS[colour]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    rng = random.Random(0)
    media = HERE / "media"
    media.mkdir(exist_ok=True)
    images = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        name = f"{colour}_{shape}.{'jpg' if i % 2 else 'png'}"
        draw_image(media / name, colour, shape, IMAGE_SIZES[i % len(IMAGE_SIZES)])
        images.append((f"media/{name}", colour, shape))
    videos = []
    for i, (colour, direction) in enumerate((("red", "right"), ("blue", "left"), ("green", "right"))):
        fps = (4, 8, 4)[i]
        name = f"{colour}_{direction}.mp4"
        write_video(media / name, colour, direction, fps=fps, num_frames=(8, 16, 8)[i])
        videos.append((f"media/{name}", colour, direction))

    records = []
    for path, colour, shape in images:
        records.append({"prompt": "What is in <image_no_1>? Answer:", "completion": f" a {colour} {shape}.", "images": [path]})
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"Describe <image_no_1> in a few words."},
                    {"role": "assistant", "content": f"A {colour} {shape} on a white background."},
                ],
                "images": [path],
            }
        )
    for path, colour, direction in videos:
        records.append(
            {
                "messages": [
                    {"role": "user", "content": "<video_no_1>\nWhere does the square go?"},
                    {"role": "assistant", "content": f"The {colour} square moves to the {direction}."},
                ],
                "videos": [path],
            }
        )
        records.append({"text": f"In <video_no_1> a {colour} square moves to the {direction}.", "videos": [path]})
    for _ in range(4):
        (a, ca, sa), (b, cb, sb) = rng.sample(images, 2)
        records.append(
            {
                "text": f"Left:<image_no_1> right:<image_no_2> The left is a {ca} {sa}, the right a {cb} {sb}.",
                "images": [a, b],
            }
        )
    (v, cv, dv), (i, ci, si) = videos[0], images[3]
    records.append(
        {
            "prompt": "<image_no_1><video_no_1>Which colour moves?",
            "completion": f" The {cv} one moves {dv}; the {ci} {si} stays.",
            "images": [i],
            "videos": [v],
        }
    )
    rng.shuffle(records)
    with open(HERE / "data.jsonl", "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    print(f"wrote {len(records)} records, {len(images)} images and {len(videos)} videos under {HERE}")


if __name__ == "__main__":
    main()

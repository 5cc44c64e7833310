"""Generate small test media on disk: images in every mode `load_image` converts, H.264 videos whose
frames encode their own index, an audio-only mp4, truncated copies, text impostors, a cheap bomb PNG.

Other test files import these helpers, so keep the names and signatures stable.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

_FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def _noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def write_image(path, width: int, height: int, *, mode: str = "RGB", fmt: str | None = None, seed: int = 0) -> Path:
    """Write a random-noise image of `width` x `height` in `mode`; the format comes from the suffix.

    CMYK is best written as JPEG and I;16 as PNG (the formats that keep those modes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or _FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format from suffix {path.suffix!r}; pass fmt=")

    if mode in ("RGB", "RGBA", "LA"):
        image = Image.fromarray(_noise(height, width, len(mode), seed))  # mode inferred from the channel count
    elif mode == "L":
        image = Image.fromarray(_noise(height, width, 1, seed)[..., 0])
    elif mode == "P":
        image = Image.fromarray(_noise(height, width, 3, seed)).quantize(colors=64)
    elif mode == "CMYK":
        image = Image.frombytes("CMYK", (width, height), _noise(height, width, 4, seed).tobytes())
    elif mode == "I;16":
        # A horizontal gradient over the full 16-bit range (0 .. 65535), so scaling (not clipping) is visible.
        row = np.linspace(0, 65535, num=width).round().astype(np.uint16)
        image = Image.fromarray(np.tile(row, (height, 1)))
    else:
        raise ValueError(f"write_image does not support mode {mode!r}")
    image.save(path, format=fmt)
    return path


# Frames written by `write_video` carry their index in binary: the top half is split into
# FRAME_ID_BITS vertical stripes, stripe k white when bit k of the index is set, black otherwise.
# Flat black/white stripes survive lossy H.264 coding, so any decoded frame can be identified.
FRAME_ID_BITS = 8


def frame_pixels(index: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """The (H, W, 3) uint8 RGB picture `write_video` encodes as frame `index` (index < 2**FRAME_ID_BITS)."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[height // 2 :] = _noise(1, 1, 3, seed)[0, 0] // 2 + 64  # bottom half: a flat colour picked by `seed`
    edges = np.linspace(0, width, FRAME_ID_BITS + 1).astype(int)
    for bit in range(FRAME_ID_BITS):
        pixels[: height // 2, edges[bit] : edges[bit + 1]] = 255 if (index >> bit) & 1 else 0
    return pixels


def frame_index_from_pixels(frame: np.ndarray) -> int:
    """Read back the index `frame_pixels` drew into a decoded (H, W, 3) frame, tolerating codec noise."""
    height, width = frame.shape[:2]
    edges = np.linspace(0, width, FRAME_ID_BITS + 1).astype(int)
    index = 0
    for bit in range(FRAME_ID_BITS):
        # Sample the stripe's middle, away from ringing at its edges and at the half-way line.
        middle = (edges[bit] + edges[bit + 1]) // 2
        stripe = frame[1 : max(2, height // 2 - 2), max(0, middle - 1) : middle + 1]
        if stripe.mean() > 127:
            index |= 1 << bit
    return index


def write_video(path, *, num_frames: int, fps: int, width: int, height: int, seed: int = 0) -> Path:
    """Write an H.264 mp4 (yuv420p) whose frame i shows `frame_pixels(i, ...)`: its index in binary stripes.

    Needs width >= 2 * FRAME_ID_BITS (stripes at least 2 px wide) and even width/height; `seed`
    picks the colour of the bottom half. num_frames=1 gives a (legal) one-frame video.
    """
    import av

    if width % 2 or height % 2:
        raise ValueError("yuv420p needs even width and height")
    if width < 2 * FRAME_ID_BITS or height < 8:
        raise ValueError(f"frames must be at least {2 * FRAME_ID_BITS}x8 to carry their index")
    if num_frames > 2**FRAME_ID_BITS:
        raise ValueError(f"at most {2**FRAME_ID_BITS} frames can carry distinct indices")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(_h264_encoder(), rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Encoder defaults otherwise (B-frames included, so decode order != presentation order, as in real files).
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index, width, height, seed), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    return path


def _h264_encoder() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "h264"


def write_audio_only_mp4(path, *, seconds: float = 0.5, sample_rate: int = 16000) -> Path:
    """Write an mp4 with one AAC audio stream (a sine tone) and no video stream."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples_per_frame = 1024  # AAC frame size
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        total = int(seconds * sample_rate)
        for start in range(0, total, samples_per_frame):
            t = np.arange(start, start + samples_per_frame) / sample_rate
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated(path_src, path_dst, keep_fraction: float = 0.5) -> Path:
    """Copy the first `keep_fraction` of `path_src`'s bytes to `path_dst` (a file cut off mid-download)."""
    data = Path(path_src).read_bytes()
    path_dst = Path(path_dst)
    path_dst.parent.mkdir(parents=True, exist_ok=True)
    path_dst.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return path_dst


def write_text_file(path, text: str = "not media") -> Path:
    """A plain-text file, whatever its suffix claims."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_bomb_png(path, *, side: int | None = None) -> Path:
    """A 1-bit all-black PNG whose pixel count exceeds 2 * Image.MAX_IMAGE_PIXELS (a decompression bomb).

    Written by hand, row by row through one zlib stream, so it costs a few KB on disk and well under
    a second: PIL would have to hold the whole image to save it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = side or int((2 * limit) ** 0.5) + 64
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0, then packed 1-bit pixels
    compressor = zlib.compressobj(9)
    rows_per_chunk = 1024
    chunk = row * rows_per_chunk
    parts = [compressor.compress(chunk) for _ in range(side // rows_per_chunk)]
    parts.append(compressor.compress(row * (side % rows_per_chunk)))
    parts.append(compressor.flush())

    def png_chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )
    return path

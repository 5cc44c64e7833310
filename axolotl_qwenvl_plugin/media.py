"""Probe and decode media files: images through PIL, videos through decord with a PyAV fallback.

Every problem with a file surfaces as `MediaError(Reason.X, detail, path=...)`; no raw PIL, decord
or PyAV exception escapes. torch is never imported here: frames come back as uint8 numpy arrays.

Video backends: decord is tried first (if it imports); if it is missing or fails on a file, PyAV
is tried. Pass `backend="decord"` or `backend="pyav"` to force one (tests do). Both number frames
0-based in the order the decoder outputs them (presentation order), so indices agree between them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import MediaError, Reason

if TYPE_CHECKING:
    import av

VIDEO_BACKENDS = ("decord", "pyav")

# Qwen2.5-VL merges frames in temporal patches of 2, so a usable video needs at least this many.
MIN_VIDEO_FRAMES = 2

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    num_frames: int  # total frames in the stream
    fps: float  # average frame rate of the stream
    backend: str  # "decord" or "pyav"


# --------------------------------------------------------------------------------------- files


def _require_nonempty_file(path: Path | str) -> Path:
    """MISSING_FILE / EMPTY_FILE checks shared by images and videos."""
    path = Path(path)
    if not path.exists():
        raise MediaError(Reason.MISSING_FILE, "file does not exist; check the path and the media directory", path=str(path))
    if not path.is_file():
        raise MediaError(Reason.MISSING_FILE, "path is a directory (or not a regular file), expected a media file", path=str(path))
    if path.stat().st_size == 0:
        raise MediaError(Reason.EMPTY_FILE, "file is empty (0 bytes); re-copy or re-download it", path=str(path))
    return path


def _short(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception, trimmed: decord messages carry long C++ stack prefixes."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = (lines[0] if lines else "").strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -------------------------------------------------------------------------------------- images


def _open_image(path: Path, *, decode: bool, on_open) -> object:
    """Open `path` with PIL (optionally fully decoding it), call `on_open(image)` and map PIL errors to MediaError.

    The file handle is ours, so it is closed even when PIL raises mid-open.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise MediaError(Reason.MISSING_FILE, f"file cannot be read ({_short(exc)})", path=str(path)) from None
    with handle, warnings.catch_warnings():
        # PIL only *warns* between MAX_IMAGE_PIXELS and twice that; treat both as too large.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(path, exc) from None
        except UnidentifiedImageError:
            raise MediaError(
                Reason.NOT_AN_IMAGE,
                "PIL cannot identify this file as an image (wrong content for its name, or an unsupported format); "
                "convert it to JPEG/PNG/WebP",
                path=str(path),
            ) from None
        except Exception as exc:  # malformed headers surface as assorted errors
            raise MediaError(Reason.NOT_AN_IMAGE, f"cannot read the image header ({_short(exc)})", path=str(path)) from None
        with image:
            if decode:
                try:
                    image.load()
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                    raise _too_large(path, exc) from None
                except Exception as exc:  # OSError "image file is truncated", zlib/struct errors on corrupt data
                    raise MediaError(
                        Reason.TRUNCATED_IMAGE,
                        f"image data is truncated or corrupt and cannot be decoded ({_short(exc)}); "
                        "re-download or re-export the file",
                        path=str(path),
                    ) from None
            return on_open(image)


def _too_large(path: Path, exc: BaseException) -> MediaError:
    return MediaError(
        Reason.IMAGE_TOO_LARGE,
        f"image has more pixels than PIL's safety limit Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS} ({_short(exc)}); "
        "resize the file to a sensible resolution (Qwen2.5-VL downsamples it anyway)",
        path=str(path),
    )


def probe_image(path: Path, *, decode: bool = False) -> ImageInfo:
    """Width and height from the header alone; `decode=True` also decodes the pixels (catches truncation)."""
    path = _require_nonempty_file(path)
    return _open_image(path, decode=decode, on_open=lambda image: ImageInfo(width=image.width, height=image.height))


def load_image(path: Path) -> Image.Image:
    """The fully decoded image as 8-bit RGB (transparency composited onto white). EXIF orientation is not applied,
    so the size always matches `probe_image`."""
    path = _require_nonempty_file(path)
    return _open_image(path, decode=True, on_open=lambda image: _to_rgb(image, path))


_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            return image.copy()
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            # Before the transparency branch: convert("RGBA") would clip 16-bit values instead of scaling.
            return _high_depth_to_rgb(image, path)
        if mode in _ALPHA_MODES or "transparency" in image.info:
            # Palette/grey/RGB images with a transparent colour or an alpha band: composite onto white
            # (what a viewer shows), rather than letting convert("RGB") drop alpha and expose junk colours.
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        # P (no transparency), L, 1, CMYK, YCbCr: PIL converts these directly.
        return image.convert("RGB")
    except MediaError:
        raise
    except Exception as exc:  # e.g. LAB or other modes PIL has no RGB conversion for
        raise MediaError(
            Reason.UNSUPPORTED_IMAGE,
            f"image mode {mode!r} cannot be converted to RGB ({_short(exc)}); re-save it as 8-bit RGB JPEG/PNG",
            path=str(path),
        ) from None


def _high_depth_to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """16-bit ("I;16*", or "I" holding 0..65535) scaled to 0..255 (65535 -> 255, 32768 -> 128), not clipped.

    Other "I"/"F" data (negative, >16-bit or float) is stretched from its own min..max to 0..255.
    """
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise MediaError(
            Reason.UNSUPPORTED_IMAGE,
            f"image mode {image.mode!r} holds NaN/inf pixels that have no RGB equivalent; re-save it as 8-bit RGB",
            path=str(path),
        )
    is_16_bit = image.mode in _SIXTEEN_BIT_MODES or (
        image.mode == "I" and (values.size == 0 or (values.min() >= 0 and values.max() <= 65535))
    )
    if is_16_bit:
        scaled = np.rint(values * (255.0 / 65535.0))
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = np.zeros_like(values) if high == low else np.rint((values - low) * (255.0 / (high - low)))
    grey = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))  # (H, W, 3) uint8 -> RGB


# -------------------------------------------------------------------------------------- videos


def probe_video(path: Path, *, decode_first_frame: bool = False, backend: str | None = None) -> VideoInfo:
    """Frame count, average fps and size of the first video stream, from container metadata.

    `decode_first_frame=True` also decodes frame 0 to prove the stream decodes. (decord has no size
    accessor, so the decord path always decodes frame 0 to learn width/height.)
    Raises TOO_FEW_FRAMES when the stream has < 2 frames or no usable frame rate.
    """
    path = _require_nonempty_file(path)
    failures: list[str] = []
    for name in _video_backends(backend):
        try:
            info = _probe_with_decord(path) if name == "decord" else _probe_with_pyav(path, decode_first_frame)
        except MediaError:
            raise  # a verdict about the file itself (e.g. too few frames): another backend would agree
        except Exception as exc:  # this backend cannot handle the file: try the next one
            failures.append(f"{name}: {_short(exc)}")
            continue
        _require_enough_frames(info, path)
        return info
    raise _diagnose_video_failure(path, failures)


def read_video_frames(path: Path, indices: Sequence[int], *, backend: str | None = None) -> np.ndarray:
    """Decode the frames at `indices` (0-based, any order, repeats allowed) as uint8 RGB (T, H, W, 3), in that order.

    An index >= the stream's frame count raises UNDECODABLE_VIDEO.
    """
    path = _require_nonempty_file(path)
    wanted = [int(index) for index in indices]
    if not wanted:
        raise ValueError("read_video_frames needs at least one frame index")
    if min(wanted) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(wanted)}")
    failures: list[str] = []
    for name in _video_backends(backend):
        try:
            frames = _read_with_decord(path, wanted) if name == "decord" else _read_with_pyav(path, wanted)
        except MediaError:
            raise
        except Exception as exc:
            failures.append(f"{name}: {_short(exc)}")
            continue
        return frames
    raise _diagnose_video_failure(path, failures)


def _video_backends(forced: str | None) -> list[str]:
    if forced is not None:
        if forced not in VIDEO_BACKENDS:
            raise ValueError(f"backend must be one of {VIDEO_BACKENDS} or None, got {forced!r}")
        if forced == "decord" and _import_decord() is None:
            raise RuntimeError("backend='decord' was forced but decord cannot be imported")
        return [forced]
    return (["decord"] if _import_decord() is not None else []) + ["pyav"]


def _import_decord():
    """The decord module, or None when it is not installed or fails to load (then PyAV is used)."""
    try:
        import decord
    except Exception:  # ImportError, or a broken native library
        return None
    return decord


def _require_enough_frames(info: VideoInfo, path: Path) -> None:
    if info.num_frames < MIN_VIDEO_FRAMES:
        raise MediaError(
            Reason.TOO_FEW_FRAMES,
            f"video has {info.num_frames} frame(s); Qwen2.5-VL needs at least {MIN_VIDEO_FRAMES} "
            "(frames are merged in temporal pairs); use a longer clip or pass the frame as an image",
            path=str(path),
        )
    if not np.isfinite(info.fps) or info.fps <= 0:
        raise MediaError(
            Reason.TOO_FEW_FRAMES,
            f"video reports a frame rate of {info.fps} (zero duration), so frames cannot be sampled in time; "
            + _REENCODE_HINT,
            path=str(path),
        )


def _check_indices_in_range(wanted: list[int], num_frames: int, path: Path) -> None:
    if max(wanted) >= num_frames:
        raise MediaError(
            Reason.UNDECODABLE_VIDEO,
            f"frame index {max(wanted)} requested but the video has only {num_frames} frames (0..{num_frames - 1}); "
            "the file may have changed since it was probed",
            path=str(path),
        )


def _diagnose_video_failure(path: Path, failures: list[str]) -> MediaError:
    """Every backend failed: name the most specific reason, using PyAV to look at the container."""
    try:
        container, _ = _open_pyav(path)
        container.close()
    except MediaError as error:  # not a container at all, or no video stream in it
        return error
    except Exception:
        pass
    return MediaError(
        Reason.UNDECODABLE_VIDEO,
        f"the video stream cannot be decoded ({'; '.join(failures)}); the file may be corrupt or use an "
        f"unsupported codec: {_REENCODE_HINT}",
        path=str(path),
    )


# decord -------------------------------------------------------------------------------------


def _open_decord(path: Path):
    decord = _import_decord()
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _probe_with_decord(path: Path) -> VideoInfo:
    reader = _open_decord(path)  # decord asserts the frame count is > 0 while opening
    num_frames = len(reader)
    fps = float(reader.get_avg_fps())
    height, width = reader.next().shape[:2]  # no size accessor in decord: decode frame 0
    return VideoInfo(width=int(width), height=int(height), num_frames=int(num_frames), fps=fps, backend="decord")


def _read_with_decord(path: Path, wanted: list[int]) -> np.ndarray:
    reader = _open_decord(path)
    _check_indices_in_range(wanted, len(reader), path)
    frames = reader.get_batch(wanted).asnumpy()
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(wanted) or frames.shape[3] != 3:
        raise RuntimeError(f"decord returned frames of unexpected shape {frames.shape} / dtype {frames.dtype}")
    return np.ascontiguousarray(frames)


# PyAV ---------------------------------------------------------------------------------------


def _open_pyav(path: Path) -> tuple["av.container.InputContainer", "av.video.stream.VideoStream"]:
    """Open the container and pick its first video stream; the caller closes the container."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(
            Reason.NOT_A_VIDEO,
            f"FFmpeg does not recognise this as a media container ({_short(exc)}); the file is not a video, "
            "or was cut off (e.g. a partial download)",
            path=str(path),
        ) from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["none"]
        container.close()
        raise MediaError(
            Reason.NO_VIDEO_STREAM,
            f"container has no video stream (stream types: {', '.join(kinds)}); an audio-only file cannot be used as a video",
            path=str(path),
        )
    return container, container.streams.video[0]


def _pyav_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _pyav_frame_count(container, stream, fps: float) -> int:
    """The stream's frame count: the header's, else duration x fps, else counting packets (no decoding)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base and fps > 0:
        return int(round(float(stream.duration * stream.time_base) * fps))
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def _iter_pyav_frames(container, stream) -> Iterator["av.VideoFrame"]:
    """Decoded frames of `stream` in output order (the same numbering decord uses). Tests wrap this to count."""
    yield from container.decode(stream)


def _probe_with_pyav(path: Path, decode_first_frame: bool) -> VideoInfo:
    container, stream = _open_pyav(path)
    with container:
        fps = _pyav_fps(stream)
        num_frames = _pyav_frame_count(container, stream, fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        info = VideoInfo(width=int(width), height=int(height), num_frames=num_frames, fps=fps, backend="pyav")
        _require_enough_frames(info, path)
        if decode_first_frame or not (width and height):
            first = next(_iter_pyav_frames(container, stream), None)
            if first is None:
                raise MediaError(
                    Reason.UNDECODABLE_VIDEO, f"no frame of the video stream could be decoded; {_REENCODE_HINT}", path=str(path)
                )
            info = VideoInfo(width=first.width, height=first.height, num_frames=num_frames, fps=fps, backend="pyav")
    return info


def _read_with_pyav(path: Path, wanted: list[int]) -> np.ndarray:
    """Decode sequentially, converting only the requested frames and stopping after the last one."""
    container, stream = _open_pyav(path)
    with container:
        if stream.frames:
            _check_indices_in_range(wanted, int(stream.frames), path)
        requested, last = set(wanted), max(wanted)
        kept: dict[int, np.ndarray] = {}
        decoded = 0
        for index, frame in enumerate(_iter_pyav_frames(container, stream)):
            decoded = index + 1
            if index in requested:
                kept[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    if last not in kept:
        _check_indices_in_range(wanted, decoded, path)
    sizes = {array.shape for array in kept.values()}
    if len(sizes) != 1:
        raise MediaError(
            Reason.UNDECODABLE_VIDEO,
            f"requested frames have different sizes {sorted(sizes)}; {_REENCODE_HINT}",
            path=str(path),
        )
    return np.stack([kept[index] for index in wanted])

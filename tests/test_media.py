"""media.py: image probing/conversion, video probing/decoding on both backends, and every MediaError reason."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from axolotl_qwenvl_plugin import media
from axolotl_qwenvl_plugin.errors import MediaError, Reason
from axolotl_qwenvl_plugin.media import ImageInfo, load_image, probe_image, probe_video, read_video_frames

from media_factory import (  # tests/ is on sys.path (pytest rootdir-relative "prepend" import mode)
    frame_index_from_pixels,
    frame_pixels,
    write_audio_only_mp4,
    write_bomb_png,
    write_image,
    write_text_file,
    write_truncated,
    write_video,
)

BACKENDS = ["decord", "pyav"]


def assert_media_error(excinfo, reason: Reason, path) -> None:
    error = excinfo.value
    assert error.reason is reason, str(error)
    assert error.path == str(path)
    assert str(path) in str(error)  # the user sees which file is bad
    assert reason.value in str(error)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Shared test videos (written once per module to keep the file fast)."""
    folder = tmp_path_factory.mktemp("videos")
    return {
        "10fps": write_video(folder / "ten.mp4", num_frames=30, fps=10, width=64, height=48),
        "25fps": write_video(folder / "twentyfive.mp4", num_frames=50, fps=25, width=32, height=32, seed=1),
        "long": write_video(folder / "long.mp4", num_frames=200, fps=30, width=64, height=32),
        "one_frame": write_video(folder / "one.mp4", num_frames=1, fps=10, width=32, height=32),
        "audio_only": write_audio_only_mp4(folder / "audio.mp4"),
        "text": write_text_file(folder / "notes.mp4", "this is not a video"),
    }


# -------------------------------------------------------------------------------- image probe


@pytest.mark.parametrize(
    "name, width, height",
    [("a.jpg", 640, 480), ("b.jpeg", 17, 301), ("c.png", 1, 1), ("d.png", 333, 77), ("e.webp", 33, 17), ("f.webp", 128, 96)],
)
def test_probe_image_reports_exact_size(tmp_path, name, width, height):
    path = write_image(tmp_path / name, width, height)
    assert probe_image(path) == ImageInfo(width=width, height=height)
    assert probe_image(path, decode=True) == ImageInfo(width=width, height=height)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_probe_reads_only_the_header_so_truncation_shows_only_when_decoding(tmp_path, suffix):
    whole = write_image(tmp_path / f"whole{suffix}", 400, 300)
    truncated = write_truncated(whole, tmp_path / f"half{suffix}", keep_fraction=0.5)

    assert probe_image(truncated) == ImageInfo(400, 300)  # header intact, pixels not read
    with pytest.raises(MediaError) as excinfo:
        probe_image(truncated, decode=True)
    assert_media_error(excinfo, Reason.TRUNCATED_IMAGE, truncated)
    with pytest.raises(MediaError) as excinfo:
        load_image(truncated)
    assert_media_error(excinfo, Reason.TRUNCATED_IMAGE, truncated)


def test_importing_media_leaves_pil_strict_about_truncation():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------- load_image modes


@pytest.mark.parametrize(
    "mode, name", [("RGB", "a.jpg"), ("RGBA", "a.png"), ("RGBA", "a.webp"), ("LA", "a.png"), ("L", "a.jpg"),
                   ("P", "a.png"), ("CMYK", "a.jpg"), ("I;16", "a.png")],
)
def test_load_image_returns_rgb_of_the_right_size_for_every_mode(tmp_path, mode, name):
    path = write_image(tmp_path / name, 37, 21, mode=mode)
    with Image.open(path) as original:
        assert original.mode == mode  # the factory really wrote that mode
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (37, 21)


def test_rgba_is_composited_onto_white(tmp_path):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 0)  # fully transparent: colour must not leak through
    pixels[0, 1] = (10, 20, 30, 255)  # opaque: kept as is
    pixels[0, 2] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels).save(path)

    image = load_image(path)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (10, 20, 30)
    assert all(abs(channel - 127) <= 1 for channel in image.getpixel((2, 0)))


def test_la_is_composited_onto_white(tmp_path):
    pixels = np.array([[[40, 0], [40, 255]]], dtype=np.uint8)  # (grey, alpha)
    path = tmp_path / "grey_alpha.png"
    Image.fromarray(pixels).save(path)

    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (40, 40, 40)


def test_palette_with_transparent_index_becomes_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * (256 * 3 - 6))  # index 0 red, index 1 blue
    image.putdata([0, 1])
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # index 0 (red) is the transparent colour

    with Image.open(path) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    rgb = load_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (0, 0, 200)


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    red = load_image(path).getpixel((4, 4))
    assert red[0] >= 245 and red[1] <= 10 and red[2] <= 10


def test_grayscale_converts_to_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 4), 77).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((2, 2)) == (77, 77, 77)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535, 257]], dtype=np.uint16)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (1, 1, 1)]


def test_32_bit_integer_mode_i_holding_16_bit_values_is_scaled(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "I"
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_factory_16_bit_gradient_spans_black_to_white(tmp_path):
    image = load_image(write_image(tmp_path / "gradient.png", 64, 4, mode="I;16"))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((63, 0)) == (255, 255, 255)


# -------------------------------------------------------------------------------- image errors


def test_missing_image_file(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(MediaError) as excinfo:
        probe_image(path)
    assert_media_error(excinfo, Reason.MISSING_FILE, path)


def test_directory_is_reported_as_missing_file(tmp_path):
    path = tmp_path / "folder.jpg"
    path.mkdir()
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert_media_error(excinfo, Reason.MISSING_FILE, path)
    assert "directory" in excinfo.value.detail


def test_empty_image_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as excinfo:
        probe_image(path)
    assert_media_error(excinfo, Reason.EMPTY_FILE, path)


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = write_text_file(tmp_path / "fake.jpg")
    for call in (probe_image, load_image):
        with pytest.raises(MediaError) as excinfo:
            call(path)
        assert_media_error(excinfo, Reason.NOT_AN_IMAGE, path)


def test_decompression_bomb_is_too_large(tmp_path):
    path = write_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000  # cheap on disk despite > 2 * MAX_IMAGE_PIXELS pixels
    for call in (probe_image, load_image):
        with pytest.raises(MediaError) as excinfo:
            call(path)
        assert_media_error(excinfo, Reason.IMAGE_TOO_LARGE, path)
        assert "resize" in excinfo.value.detail


def test_image_between_limit_and_twice_the_limit_is_too_large_not_a_warning(tmp_path, monkeypatch):
    # PIL only warns in this band; media turns the warning into IMAGE_TOO_LARGE.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_image(tmp_path / "big.png", 40, 40)  # 1600 pixels: above 1000, below 2000
    with pytest.raises(MediaError) as excinfo:
        probe_image(path)
    assert_media_error(excinfo, Reason.IMAGE_TOO_LARGE, path)


def test_float_image_with_nan_is_unsupported(tmp_path):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(path)
    assert probe_image(path, decode=True) == ImageInfo(2, 1)  # decodable, just not convertible
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert_media_error(excinfo, Reason.UNSUPPORTED_IMAGE, path)


# -------------------------------------------------------------------------------- video probe


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "key, num_frames, fps, width, height", [("10fps", 30, 10.0, 64, 48), ("25fps", 50, 25.0, 32, 32)]
)
@pytest.mark.parametrize("decode_first_frame", [False, True])
def test_probe_video_metadata(videos, backend, key, num_frames, fps, width, height, decode_first_frame):
    info = probe_video(videos[key], backend=backend, decode_first_frame=decode_first_frame)
    assert info.backend == backend
    assert info.num_frames == num_frames
    assert info.fps == pytest.approx(fps, abs=1e-3)
    assert (info.width, info.height) == (width, height)


def test_decord_is_the_default_backend(videos):
    assert probe_video(videos["10fps"]).backend == "decord"


# ------------------------------------------------------------------------------ video decoding


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_video_frames_returns_requested_frames_in_order(videos, backend):
    indices = [7, 0, 29, 3, 3, 12]  # out of order, with a repeat
    frames = read_video_frames(videos["10fps"], indices, backend=backend)

    assert frames.shape == (6, 48, 64, 3)
    assert frames.dtype == np.uint8
    assert [frame_index_from_pixels(frame) for frame in frames] == indices
    for index, frame in zip(indices, frames):
        # H.264 is lossy: compare with what was encoded, allowing for codec noise.
        assert np.abs(frame.astype(int) - frame_pixels(index, 64, 48)).mean() < 4


def test_both_backends_decode_the_same_pixels(videos):
    indices = [49, 1, 24, 10]
    from_decord = read_video_frames(videos["25fps"], indices, backend="decord")
    from_pyav = read_video_frames(videos["25fps"], indices, backend="pyav")
    assert from_decord.shape == from_pyav.shape == (4, 32, 32, 3)
    # Same FFmpeg decoder underneath; only the YUV->RGB conversion may differ slightly.
    assert np.abs(from_decord.astype(int) - from_pyav.astype(int)).max() <= 8


def test_falls_back_to_pyav_when_decord_fails(videos, monkeypatch):
    import decord

    # Simulates decord failing on this file (what it does on some codecs/containers).
    def broken_reader(*args, **kwargs):
        raise RuntimeError("simulated decord failure")

    monkeypatch.setattr(decord, "VideoReader", broken_reader)
    info = probe_video(videos["10fps"])
    assert info.backend == "pyav"
    assert (info.num_frames, info.width, info.height) == (30, 64, 48)
    frames = read_video_frames(videos["10fps"], [5, 1, 20])
    assert [frame_index_from_pixels(frame) for frame in frames] == [5, 1, 20]


def test_uses_pyav_when_decord_is_not_installed(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    assert probe_video(videos["25fps"]).backend == "pyav"
    frames = read_video_frames(videos["25fps"], [30, 2])
    assert [frame_index_from_pixels(frame) for frame in frames] == [30, 2]
    with pytest.raises(RuntimeError, match="decord"):
        probe_video(videos["25fps"], backend="decord")


def test_pyav_stops_decoding_after_the_last_requested_frame(videos, monkeypatch):
    decoded_count = 0
    original = media._iter_pyav_frames

    def counting_frames(container, stream):
        nonlocal decoded_count
        for frame in original(container, stream):
            decoded_count += 1
            yield frame

    monkeypatch.setattr(media, "_iter_pyav_frames", counting_frames)
    frames = read_video_frames(videos["long"], [5, 2], backend="pyav")

    assert [frame_index_from_pixels(frame) for frame in frames] == [5, 2]
    assert decoded_count == 6  # frames 0..5 of 200, nothing after the last requested one


def test_unknown_backend_is_a_programming_error(videos):
    with pytest.raises(ValueError, match="backend"):
        probe_video(videos["10fps"], backend="opencv")


# -------------------------------------------------------------------------------- video errors


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_one_frame_video_has_too_few_frames(videos, backend):
    with pytest.raises(MediaError) as excinfo:
        probe_video(videos["one_frame"], backend=backend)
    assert_media_error(excinfo, Reason.TOO_FEW_FRAMES, videos["one_frame"])


def test_zero_fps_counts_as_too_few_frames(tmp_path):
    # No encoder writes such a file on demand, so check the rule that probe_video applies directly.
    info = media.VideoInfo(width=32, height=32, num_frames=10, fps=0.0, backend="pyav")
    with pytest.raises(MediaError) as excinfo:
        media._require_enough_frames(info, tmp_path / "still.mp4")
    assert_media_error(excinfo, Reason.TOO_FEW_FRAMES, tmp_path / "still.mp4")


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_audio_only_mp4_has_no_video_stream(videos, backend):
    for call in (lambda path: probe_video(path, backend=backend), lambda path: read_video_frames(path, [0], backend=backend)):
        with pytest.raises(MediaError) as excinfo:
            call(videos["audio_only"])
        assert_media_error(excinfo, Reason.NO_VIDEO_STREAM, videos["audio_only"])


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_text_file_named_mp4_is_not_a_video(videos, backend):
    for call in (lambda path: probe_video(path, backend=backend), lambda path: read_video_frames(path, [0], backend=backend)):
        with pytest.raises(MediaError) as excinfo:
            call(videos["text"])
        assert_media_error(excinfo, Reason.NOT_A_VIDEO, videos["text"])


def test_truncated_mp4_without_its_index_is_not_a_video(videos, tmp_path):
    # PyAV writes the mp4 index (moov) at the end, so the first half is not a readable container.
    path = write_truncated(videos["10fps"], tmp_path / "half.mp4", keep_fraction=0.5)
    with pytest.raises(MediaError) as excinfo:
        probe_video(path)
    assert_media_error(excinfo, Reason.NOT_A_VIDEO, path)


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_frame_index_out_of_range_is_undecodable(videos, backend):
    with pytest.raises(MediaError) as excinfo:
        read_video_frames(videos["10fps"], [0, 30], backend=backend)  # 30 frames: 0..29
    assert_media_error(excinfo, Reason.UNDECODABLE_VIDEO, videos["10fps"])
    assert "30" in excinfo.value.detail


def test_missing_and_empty_video_files(tmp_path):
    missing = tmp_path / "gone.mp4"
    with pytest.raises(MediaError) as excinfo:
        probe_video(missing)
    assert_media_error(excinfo, Reason.MISSING_FILE, missing)

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError) as excinfo:
        read_video_frames(empty, [0])
    assert_media_error(excinfo, Reason.EMPTY_FILE, empty)

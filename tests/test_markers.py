"""Marker parsing and media resolution (pure, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from axolotl_qwenvl_plugin.errors import Reason, RecordError
from axolotl_qwenvl_plugin.markers import (
    MARKER_PATTERN,
    Marker,
    MediaRef,
    markers_in,
    resolve_media,
    split_markers,
)

IMG1 = Marker("image", 1)
IMG2 = Marker("image", 2)
VID1 = Marker("video", 1)


def joined(segments) -> str:
    return "".join(s if isinstance(s, str) else s.text for s in segments)


# ---------------------------------------------------------------- parsing


def test_marker_text():
    assert IMG1.text == "<image_no_1>"
    assert Marker("video", 12).text == "<video_no_12>"


def test_marker_pattern_matches_only_valid_markers():
    assert MARKER_PATTERN.fullmatch("<image_no_1>").groups() == ("image", "1")
    assert MARKER_PATTERN.fullmatch("<video_no_305>").groups() == ("video", "305")
    for bad in ["<image_no_0>", "<image_no_01>", "<image_no_x>", "<image_no_>", "<image_no_１>", "<img_no_1>"]:
        assert MARKER_PATTERN.fullmatch(bad) is None, bad


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Lorem<image_no_1>ipsum", ["Lorem", IMG1, "ipsum"]),
        ("Lorem<image_no_1>ipsum <video_no_1> dolor", ["Lorem", IMG1, "ipsum ", VID1, " dolor"]),
        ("<image_no_1><video_no_1>", [IMG1, VID1]),
        ("<image_no_1> and <image_no_1>", [IMG1, " and ", IMG1]),
        ("<image_no_1><image_no_1>", [IMG1, IMG1]),
        ("see <image_no_12>.", ["see ", Marker("image", 12), "."]),
        ("<video_no_1234567890>", [Marker("video", 1234567890)]),
        ("Über<image_no_1>日本語", ["Über", IMG1, "日本語"]),
        ("<image_no_1>tail", [IMG1, "tail"]),
        ("head<image_no_2>", ["head", IMG2]),
        ("a\n<image_no_1>\n\nb\r\n", ["a\n", IMG1, "\n\nb\r\n"]),
        ("a < b and c > d", ["a < b and c > d"]),
        ("<image> <video> image_no_1 video_no_1>", ["<image> <video> image_no_1 video_no_1>"]),
        ("<IMAGE_NO_1> <Image_no_1> <img_no_1>", ["<IMAGE_NO_1> <Image_no_1> <img_no_1>"]),
        ("<<image_no_1>>", ["<", IMG1, ">"]),
        ("", []),
        ("plain", ["plain"]),
    ],
)
def test_split_markers(text, expected):
    segments = split_markers(text)
    assert segments == expected
    assert joined(segments) == text


def test_markers_in_keeps_order_and_repeats():
    segments = split_markers("<video_no_1> a <image_no_2> b <image_no_1> c <image_no_2>")
    assert markers_in(segments) == [VID1, IMG2, IMG1, IMG2]
    assert markers_in(["only text"]) == []
    assert markers_in([]) == []


@pytest.mark.parametrize(
    "text, snippet, says",
    [
        ("a <image_no_> b", "<image_no_>", "has no number"),
        ("a <image_no_x> b", "<image_no_x>", "positive decimal integer"),
        ("a <video_no_x1> b", "<video_no_x1>", "positive decimal integer"),
        ("a <image_no_1", "<image_no_1", "not closed"),
        ("a <image_no_1 b>", "<image_no_1", "not closed"),
        ("a <image_no_1<video_no_1>", "<image_no_1", "not closed"),
        ("<image_no_", "<image_no_", "has no number"),
        ("a <image_no_0> b", "<image_no_0>", "numbers start at 1"),
        ("a <video_no_00> b", "<video_no_00>", "numbers start at 1"),
        ("a <image_no_01> b", "<image_no_01>", "leading zero; write <image_no_1>"),
        ("a <video_no_007> b", "<video_no_007>", "leading zero; write <video_no_7>"),
        ("a <image_no_-1> b", "<image_no_-1>", "positive decimal integer"),
        ("a <image_no_+1> b", "<image_no_+1>", "positive decimal integer"),
        ("a <image_no_1x> b", "<image_no_1x>", "positive decimal integer"),
        ("a <image_no_1.5> b", "<image_no_1.5>", "positive decimal integer"),
        ("a <image_no_１> b", "<image_no_１>", "positive decimal integer"),  # full-width digit
        ("a <image_no_ 1> b", "<image_no_", "has no number"),
    ],
)
def test_malformed_markers_are_rejected(text, snippet, says):
    with pytest.raises(RecordError) as info:
        split_markers(text)
    err = info.value
    assert err.reason is Reason.MALFORMED_MARKER
    assert err.marker == snippet
    assert says in err.detail
    assert err.location is None  # the caller adds FILE:LINE


def test_first_malformed_marker_is_reported_after_valid_ones():
    with pytest.raises(RecordError) as info:
        split_markers("<image_no_1> ok <video_no_2> then <video_no_0> and <image_no_x>")
    assert info.value.marker == "<video_no_0>"


def test_huge_malformed_snippet_is_shortened():
    with pytest.raises(RecordError) as info:
        split_markers("<image_no_" + "x" * 500 + ">")
    assert info.value.reason is Reason.MALFORMED_MARKER
    assert info.value.marker == ("<image_no_" + "x" * 500)[:60] + "..."


def test_absurdly_long_number_is_malformed_not_a_crash():
    with pytest.raises(RecordError) as info:
        split_markers("<image_no_" + "9" * 5000 + ">")
    assert info.value.reason is Reason.MALFORMED_MARKER


# Text pieces: mostly characters that could look marker-ish, plus anything at all.
_text = st.text(
    alphabet=st.one_of(st.sampled_from(list("<>_ \n0123456789abimgvdeoÜ日")), st.characters()),
    max_size=30,
)
_fragments = st.lists(
    st.sampled_from(["<image>", "<video", "image_no_1>", "_no_", "<", ">", "no_1", "<img_no_1>", "a < b"]),
    max_size=6,
).map("".join)
_marker = st.builds(Marker, st.sampled_from(["image", "video"]), st.integers(1, 10**6))


def _normalise(parts):
    """Merge adjacent text pieces and drop empty ones: what split_markers should return."""
    out = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += part
                continue
        out.append(part)
    return out


@given(st.lists(st.one_of(_text, _fragments, _marker), max_size=12))
def test_round_trip_property(parts):
    expected = _normalise(parts)
    # Only interleavings whose text does not itself spell a marker start (those must raise instead).
    assume(not any(isinstance(p, str) and ("<image_no_" in p or "<video_no_" in p) for p in expected))
    text = joined(expected)
    segments = split_markers(text)
    assert segments == expected
    assert joined(segments) == text
    assert all(s for s in segments if isinstance(s, str))


@given(st.lists(st.sampled_from(list("<>_ 0123x") + ["<image_no_", "<video_no_"]), max_size=40).map("".join))
def test_any_text_either_round_trips_or_names_the_bad_marker(text):
    try:
        segments = split_markers(text)
    except RecordError as err:
        assert err.reason is Reason.MALFORMED_MARKER
        assert err.marker.startswith(("<image_no_", "<video_no_"))
        assert err.marker in text
        assert MARKER_PATTERN.fullmatch(err.marker) is None
    else:
        assert joined(segments) == text


# ---------------------------------------------------------------- resolution


def resolve(markers, media_dir, **kw):
    kw.setdefault("images", None)
    kw.setdefault("videos", None)
    kw.setdefault("image_template", None)
    kw.setdefault("video_template", None)
    return resolve_media(markers, media_dir=media_dir, **kw)


def reason_of(markers, media_dir, **kw) -> RecordError:
    with pytest.raises(RecordError) as info:
        resolve(markers, media_dir, **kw)
    assert info.value.location is None
    return info.value


def test_resolve_from_lists(tmp_path):
    refs = resolve(
        [IMG1, VID1, IMG2],
        tmp_path,
        images=["cats/1.jpg", "cats/2.jpg"],
        videos=["clips/a.mp4"],
    )
    root = tmp_path.resolve()
    assert refs == [
        MediaRef("image", 1, str(root / "cats/1.jpg"), "cats/1.jpg"),
        MediaRef("video", 1, str(root / "clips/a.mp4"), "clips/a.mp4"),
        MediaRef("image", 2, str(root / "cats/2.jpg"), "cats/2.jpg"),
    ]


def test_resolve_from_template(tmp_path):
    refs = resolve(
        [Marker("image", 3), Marker("video", 12)],
        tmp_path,
        image_template="images/image_no_{n}.jpg",
        video_template="videos/{n:03d}.mp4",
    )
    root = tmp_path.resolve()
    assert refs == [
        MediaRef("image", 3, str(root / "images/image_no_3.jpg"), "images/image_no_3.jpg"),
        MediaRef("video", 12, str(root / "videos/012.mp4"), "videos/012.mp4"),
    ]


def test_list_wins_over_template(tmp_path):
    (ref,) = resolve([IMG1], tmp_path, images=["a.jpg"], image_template="t/{n}.jpg")
    assert ref.source == "a.jpg"


def test_empty_marker_list_is_fine(tmp_path):
    assert resolve([], tmp_path) == []
    assert resolve([], tmp_path, images=[], videos=[]) == []


def test_repeated_marker_gives_two_refs_with_the_same_path(tmp_path):
    refs = resolve(markers_in(split_markers("<image_no_1> vs <image_no_1>")), tmp_path, images=["a.jpg"])
    assert len(refs) == 2
    assert refs[0] == refs[1]
    assert refs[0].path == str(tmp_path.resolve() / "a.jpg")


def test_absolute_path_inside_media_dir_is_ok(tmp_path):
    inside = str(tmp_path / "sub" / "x.png")
    (ref,) = resolve([IMG1], tmp_path, images=[inside])
    assert ref.path == str(tmp_path.resolve() / "sub" / "x.png")
    assert ref.source == inside


def test_dotdot_that_stays_inside_is_ok(tmp_path):
    (ref,) = resolve([IMG1], tmp_path, images=["a/b/../../c/./d.jpg"])
    assert ref.path == str(tmp_path.resolve() / "c" / "d.jpg")


def test_media_dir_reached_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    (ref,) = resolve([IMG1], link, images=["a.jpg"])
    assert ref.path == str(real.resolve() / "a.jpg")


def test_symlink_inside_media_dir_pointing_inside_is_ok(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "real.jpg").write_bytes(b"x")
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "store" / "real.jpg")
    (ref,) = resolve([IMG1], tmp_path, images=["alias.jpg"])
    assert ref.path == str((tmp_path / "store" / "real.jpg").resolve())


@pytest.mark.parametrize("images", ["a.jpg", {"1": "a.jpg"}, 3])
def test_images_not_a_list(tmp_path, images):
    err = reason_of([IMG1], tmp_path, images=images)
    assert err.reason is Reason.WRONG_TYPE
    assert "`images` must be a list" in err.detail
    assert type(images).__name__ in err.detail


@pytest.mark.parametrize(
    "videos, says",
    [([1], "`videos[0]`"), (["a.mp4", None], "`videos[1]`"), (["a.mp4", ""], "empty string")],
)
def test_list_entry_not_a_path_string(tmp_path, videos, says):
    err = reason_of([VID1], tmp_path, videos=videos)
    assert err.reason is Reason.WRONG_TYPE
    assert says in err.detail


def test_images_entry_int(tmp_path):
    err = reason_of([IMG1], tmp_path, images=[1])
    assert err.reason is Reason.WRONG_TYPE
    assert "`images[0]`" in err.detail and "int" in err.detail


def test_marker_out_of_range(tmp_path):
    err = reason_of([IMG1, Marker("image", 3)], tmp_path, images=["a.jpg", "b.jpg"])
    assert err.reason is Reason.MARKER_OUT_OF_RANGE
    assert err.marker == "<image_no_3>"
    assert "has 2 entries" in err.detail


def test_marker_out_of_range_on_empty_list_beats_template(tmp_path):
    # An explicit (even empty) list means "use the list", never the template.
    err = reason_of([VID1], tmp_path, videos=[], video_template="v/{n}.mp4")
    assert err.reason is Reason.MARKER_OUT_OF_RANGE
    assert "has 0 entries" in err.detail


@pytest.mark.parametrize("kind", ["image", "video"])
def test_unused_media(tmp_path, kind):
    lists = {"images": None, "videos": None}
    lists[f"{kind}s"] = ["one", "two", "three"]
    err = reason_of([Marker(kind, 1), Marker(kind, 3)], tmp_path, **lists)
    assert err.reason is Reason.UNUSED_MEDIA
    assert err.marker == f"<{kind}_no_2>"
    assert err.path == "two"
    assert f"{kind}s[1]" in err.detail and f"add <{kind}_no_2>" in err.detail and "remove it" in err.detail


def test_unused_media_when_no_marker_of_that_kind(tmp_path):
    err = reason_of([IMG1], tmp_path, images=["a.jpg"], videos=["clip.mp4"])
    assert err.reason is Reason.UNUSED_MEDIA
    assert err.marker == "<video_no_1>"
    assert err.path == "clip.mp4"


@pytest.mark.parametrize("marker", [IMG1, VID1])
def test_no_media_source(tmp_path, marker):
    # The other kind having a source does not help.
    other = {"video_template": "v/{n}.mp4"} if marker.kind == "image" else {"image_template": "i/{n}.jpg"}
    err = reason_of([marker], tmp_path, **other)
    assert err.reason is Reason.NO_MEDIA_SOURCE
    assert err.marker == marker.text
    assert f"`{marker.kind}s` list" in err.detail
    assert f"qwenvl.{marker.kind}_template" in err.detail


@pytest.mark.parametrize("template", ["img/{m}.jpg", "img/{}.jpg", "img/{n:q}.jpg", "img/{n.real.x}.jpg", "img/{n"])
def test_bad_template(tmp_path, template):
    err = reason_of([IMG1], tmp_path, image_template=template)
    assert err.reason is Reason.WRONG_TYPE
    assert "qwenvl.image_template" in err.detail and repr(template) in err.detail
    assert err.marker == "<image_no_1>"


def test_template_producing_empty_path(tmp_path):
    err = reason_of([IMG1], tmp_path, image_template="")
    assert err.reason is Reason.WRONG_TYPE
    assert "empty path" in err.detail


def _outside_cases(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (media / "link.jpg").symlink_to(outside)
    (media / "linkdir").symlink_to(tmp_path)
    return media, {
        "../../etc/passwd": (media / "../../etc/passwd").resolve(),
        "/etc/passwd": Path("/etc/passwd").resolve(),
        "../secret.jpg": outside.resolve(),
        "link.jpg": outside.resolve(),
        "linkdir/secret.jpg": outside.resolve(),
    }


@pytest.mark.parametrize("source", ["../../etc/passwd", "/etc/passwd", "../secret.jpg", "link.jpg", "linkdir/secret.jpg"])
def test_path_outside_media_dir(tmp_path, source):
    media, resolved = _outside_cases(tmp_path)
    err = reason_of([IMG1], media, images=[source])
    assert err.reason is Reason.PATH_OUTSIDE_MEDIA_DIR
    assert err.path == source
    assert err.marker == "<image_no_1>"
    assert str(resolved[source]) in err.detail
    assert "move the file under the media directory" in err.detail
    assert "qwenvl.allow_outside_media_dir: true" in err.detail

    (ref,) = resolve([IMG1], media, images=[source], allow_outside_media_dir=True)
    assert ref == MediaRef("image", 1, str(resolved[source]), source)


def test_template_escaping_media_dir(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    err = reason_of([VID1], media, video_template="../v{n}.mp4")
    assert err.reason is Reason.PATH_OUTSIDE_MEDIA_DIR
    assert err.path == "../v1.mp4"


def test_sibling_with_common_prefix_is_outside(tmp_path):
    # "/x/media-evil" starts with the string "/x/media" but is not inside it.
    media = tmp_path / "media"
    media.mkdir()
    err = reason_of([IMG1], media, images=[str(tmp_path / "media-evil" / "a.jpg")])
    assert err.reason is Reason.PATH_OUTSIDE_MEDIA_DIR


def test_unresolvable_paths(tmp_path):
    err = reason_of([IMG1], tmp_path, images=["bad\x00name.jpg"])
    assert err.reason is Reason.WRONG_TYPE and err.path == "bad\x00name.jpg"

    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    err = reason_of([IMG1], tmp_path, images=["loop_a"])
    assert err.reason is Reason.MISSING_FILE and err.path == "loop_a"


def test_existence_is_not_checked(tmp_path):
    (ref,) = resolve([IMG1], tmp_path, images=["does/not/exist.jpg"])
    assert not Path(ref.path).exists()


def test_errors_render_with_marker_and_path(tmp_path):
    err = reason_of([IMG1], tmp_path, images=["../x.jpg"])
    err.at("data.jsonl:7")
    assert str(err).startswith("data.jsonl:7: path_outside_media_dir: ")
    assert str(err).endswith("(marker <image_no_1>, path ../x.jpg)")

"""Media markers in record text: parse them into segments, resolve them to media paths.

Pure: no file reads, no torch, no PIL. The only filesystem contact is path *resolution*
(`Path.resolve`, which follows symlinks) for the media-dir safety check.

Marker syntax
-------------
A valid marker is exactly ``<image_no_N>`` or ``<video_no_N>``, where N is a decimal number
``>= 1`` written with ASCII digits and no leading zero or sign (regex
``<(image|video)_no_[1-9][0-9]*>``). Markers are case-sensitive.

The rule for malformed markers is: **anything that starts with** ``<image_no_`` **or**
``<video_no_`` **and is not a valid marker at that position is rejected** with
`Reason.MALFORMED_MARKER`. So ``<image_no_>``, ``<image_no_x>``, ``<image_no_0>``,
``<image_no_01>``, ``<image_no_-1>``, ``<image_no_1x>`` and an unclosed ``<image_no_1`` (end of
text, or followed by anything but ``>``) are all errors. Text that does not start with one of those
two prefixes is plain text, e.g. ``<image>``, ``a < b``, ``image_no_1`` (no ``<``) or
``<IMAGE_NO_1>``. A typo is never silently treated as prose, and prose never becomes media.

Resolution
----------
``<image_no_N>`` is the N-th (1-based) entry of the record's ``images`` list and ``<video_no_N>`` the
N-th of ``videos``. When the record has no such list (key absent or null), the config's template
(e.g. ``"images/image_no_{n}.jpg"``, filled with ``str.format(n=N)``) is used; a list, when
present, always wins. Every occurrence of a marker is its own media instance. Relative paths are
joined to ``media_dir``; the resolved path must stay inside ``media_dir`` unless the config allows
otherwise. Whether the file exists is checked later, by media probing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import Reason, RecordError

MediaKind = Literal["image", "video"]

# [0-9], not \d: \d also matches non-ASCII digits such as "١" or "１".
MARKER_PATTERN: re.Pattern[str] = re.compile(r"<(image|video)_no_([1-9][0-9]*)>")

# Where a marker starts; every hit must be a valid marker or it is an error.
_MARKER_START = re.compile(r"<(?:image|video)_no_")

# The malformed marker as we quote it back: the prefix, then the characters up to a `<`, `>` or
# whitespace, then the closing `>` if one follows.
_MALFORMED_SNIPPET = re.compile(r"<(?:image|video)_no_[^<>\s]*>?")
_SNIPPET_MAX = 60  # keep messages readable when someone pastes a giant token


@dataclass(frozen=True)
class Marker:
    """One marker occurrence: `<image_no_N>` or `<video_no_N>`."""

    kind: MediaKind
    number: int  # N, 1-based

    @property
    def text(self) -> str:
        return f"<{self.kind}_no_{self.number}>"


Segment = str | Marker


def split_markers(text: str) -> list[Segment]:
    """Split text into plain-text pieces and `Marker`s, in order.

    Empty pieces are omitted, and joining the pieces with the markers' `.text` gives `text` back.
    Raises `RecordError(MALFORMED_MARKER)` on the first malformed marker (see the module docstring).
    """
    segments: list[Segment] = []
    pos = 0  # end of what has been consumed so far
    for start in _MARKER_START.finditer(text):
        at = start.start()
        if at < pos:  # cannot happen (a marker contains no second `<`), but stay safe
            continue
        match = MARKER_PATTERN.match(text, at)
        if match is None:
            _raise_malformed(text, at)
        if at > pos:
            segments.append(text[pos:at])
        segments.append(Marker(kind=match.group(1), number=_parse_number(match)))  # type: ignore[arg-type]
        pos = match.end()
    if pos < len(text):
        segments.append(text[pos:])
    return segments


def markers_in(segments: Iterable[Segment]) -> list[Marker]:
    """The markers among `segments`, in order of appearance (repeats included)."""
    return [segment for segment in segments if isinstance(segment, Marker)]


def _parse_number(match: re.Match[str]) -> int:
    digits = match.group(2)
    try:
        return int(digits)
    except ValueError:  # Python refuses int() on thousands of digits; no real list is that long
        raise RecordError(
            Reason.MALFORMED_MARKER,
            f"marker number has {len(digits)} digits, which is far too large; "
            "use the 1-based position of the media in its list",
            marker=match.group(0)[:40],
        ) from None


def _raise_malformed(text: str, at: int) -> None:
    """Raise MALFORMED_MARKER for the marker-looking text at `at`, saying what is wrong with it."""
    full = _MALFORMED_SNIPPET.match(text, at).group(0)  # type: ignore[union-attr]
    snippet = full if len(full) <= _SNIPPET_MAX else full[:_SNIPPET_MAX] + "..."
    kind = "image" if full.startswith("<image") else "video"
    body = full[len(f"<{kind}_no_") :]
    closed = body.endswith(">")
    number = body[:-1] if closed else body
    example = f"<{kind}_no_1>"

    if number.isascii() and number.isdigit():
        if not closed:
            problem = f"is not closed with '>'; write it as <{kind}_no_{number.lstrip('0') or '1'}>"
        elif number.strip("0") == "":
            problem = f"numbers start at 1 (the first entry of `{kind}s` is {example})"
        else:  # only a leading zero is left
            problem = f"has a leading zero; write <{kind}_no_{number.lstrip('0')}>"
    elif number == "":
        problem = f"has no number; write e.g. {example}"
    else:
        problem = f"the number must be a positive decimal integer without sign or leading zeros, e.g. {example}"
    raise RecordError(
        Reason.MALFORMED_MARKER,
        f"malformed marker {snippet!r}: {problem} "
        f"(any text starting with '<{kind}_no_' must be a valid marker)",
        marker=snippet,
    )


@dataclass(frozen=True)
class MediaRef:
    """Where one marker occurrence's media lives."""

    kind: MediaKind
    number: int
    path: str  # absolute, resolved path
    source: str  # the path as the user wrote it (list entry or filled template), for messages


def resolve_media(
    markers: Sequence[Marker],
    *,
    images: object,
    videos: object,
    image_template: str | None,
    video_template: str | None,
    media_dir: Path,
    allow_outside_media_dir: bool = False,
) -> list[MediaRef]:
    """Resolve each marker occurrence to a `MediaRef`, in the same order.

    `images` / `videos` are the record's values (None when the key is absent). Raises `RecordError`
    with WRONG_TYPE, MARKER_OUT_OF_RANGE, NO_MEDIA_SOURCE, UNUSED_MEDIA or PATH_OUTSIDE_MEDIA_DIR.
    """
    lists: dict[str, list[str] | None] = {
        "image": _checked_list("images", images),
        "video": _checked_list("videos", videos),
    }
    templates = {"image": image_template, "video": video_template}
    media_root = Path(media_dir).resolve()
    resolved_cache: dict[str, str] = {}  # the same source resolves the same way; do it once

    refs: list[MediaRef] = []
    used: dict[str, set[int]] = {"image": set(), "video": set()}
    for marker in markers:
        entries = lists[marker.kind]
        if entries is not None:
            source = _list_entry(marker, entries)
            used[marker.kind].add(marker.number)
        else:
            source = _from_template(marker, templates[marker.kind])
        if source not in resolved_cache:
            resolved_cache[source] = _safe_path(marker, source, media_root, allow_outside_media_dir)
        refs.append(MediaRef(marker.kind, marker.number, resolved_cache[source], source))

    # A listed file nobody points at is almost always a missing marker, so it is an error.
    for kind, entries in lists.items():
        for index, entry in enumerate(entries or ()):
            number = index + 1
            if number not in used[kind]:
                raise RecordError(
                    Reason.UNUSED_MEDIA,
                    f"{kind}s entry {number} ({kind}s[{index}] = {entry!r}) is not referenced by any "
                    f"<{kind}_no_{number}> marker; add <{kind}_no_{number}> to the text where the "
                    f"{kind} belongs, or remove it from `{kind}s`",
                    marker=f"<{kind}_no_{number}>",
                    path=entry,
                )
    return refs


def _checked_list(field: str, value: object) -> list[str] | None:
    """The record's media list, or None if absent; anything but a list of non-empty strings is an error."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError(
            Reason.WRONG_TYPE,
            f"`{field}` must be a list of path strings, got {type(value).__name__} {value!r:.80}; "
            f'write e.g. "{field}": ["a.jpg"]',
        )
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not entry:
            got = "an empty string" if entry == "" else f"{type(entry).__name__} {entry!r:.80}"
            raise RecordError(
                Reason.WRONG_TYPE,
                f"`{field}[{index}]` must be a non-empty path string, got {got}",
            )
    return value


def _list_entry(marker: Marker, entries: list[str]) -> str:
    if marker.number > len(entries):
        raise RecordError(
            Reason.MARKER_OUT_OF_RANGE,
            f"{marker.text} refers to entry {marker.number} of `{marker.kind}s`, but the list has "
            f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; add the file to `{marker.kind}s` "
            "or fix the marker number",
            marker=marker.text,
        )
    return entries[marker.number - 1]


def _from_template(marker: Marker, template: str | None) -> str:
    if template is None:
        raise RecordError(
            Reason.NO_MEDIA_SOURCE,
            f"{marker.text} has no file: the record has no `{marker.kind}s` list and no "
            f"`qwenvl.{marker.kind}_template` is set; add a `{marker.kind}s` list to the record "
            f'or set e.g. `qwenvl.{marker.kind}_template: "{marker.kind}s/{marker.kind}_no_{{n}}.jpg"`',
            marker=marker.text,
        )
    try:
        source = template.format(n=marker.number)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise RecordError(
            Reason.WRONG_TYPE,
            f"`qwenvl.{marker.kind}_template` {template!r} cannot be filled in "
            f"({type(exc).__name__}: {exc}); the only field it may use is {{n}}, "
            "and literal braces must be doubled ({{ }})",
            marker=marker.text,
        ) from None
    if not source:
        raise RecordError(
            Reason.WRONG_TYPE,
            f"`qwenvl.{marker.kind}_template` {template!r} produced an empty path",
            marker=marker.text,
        )
    return source


def _safe_path(marker: Marker, source: str, media_root: Path, allow_outside: bool) -> str:
    """Absolute, symlink-resolved path for `source`; refused if it leaves `media_root` (unless allowed)."""
    # Joining an absolute path onto media_root keeps it as written.
    try:
        resolved = (media_root / source).resolve()
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise RecordError(
            Reason.WRONG_TYPE, f"{source!r} is not a usable path ({exc})", marker=marker.text, path=source
        ) from None
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise RecordError(
            Reason.MISSING_FILE, f"{source!r} cannot be resolved ({exc})", marker=marker.text, path=source
        ) from None
    # Compare resolved paths on both sides, so `..`, absolute paths and symlinks pointing out are caught.
    if not allow_outside and not resolved.is_relative_to(media_root):
        raise RecordError(
            Reason.PATH_OUTSIDE_MEDIA_DIR,
            f"{source!r} resolves to {str(resolved)!r}, outside the media directory {str(media_root)!r}; "
            "move the file under the media directory (or set `qwenvl.media_dir` to a folder that "
            "contains it), or set `qwenvl.allow_outside_media_dir: true` to allow it",
            marker=marker.text,
            path=source,
        )
    return str(resolved)

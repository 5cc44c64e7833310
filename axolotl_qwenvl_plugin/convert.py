"""`axolotl-qwenvl convert` and `export`: move chat data between common formats and marker JSONL.

    axolotl-qwenvl convert IN OUT.jsonl [--from auto|llava|sharegpt|openai] [--media-root DIR]
                                        [--check-media] [--on-bad-record error|skip]
    axolotl-qwenvl export IN.jsonl OUT --to sharegpt|openai [--on-bad-record error|skip]

Formats read by `convert` (detected per record with `--from auto`, the default)
-------------------------------------------------------------------------------
llava     ``{"id": .., "image": "a.jpg" (or a list), "conversations": [{"from": "human", "value":
          "<image>\\nWhat is ..."}, {"from": "gpt", "value": ".."}]}``; a ``video`` key works the same
          way with ``<video>``. LLaVA-Video writes ``<image>`` for its video: a record with a video, no
          image and no ``<video>`` placeholder has its ``<image>`` placeholders read as the video.
sharegpt  LLaMA-Factory's sharegpt with its default dataset_info tags: ``conversations`` of
          ``{"from", "value"}`` with human / gpt / system (``user`` / ``assistant`` are accepted too),
          an optional top-level ``system`` string, or ``messages`` of ``{"role", "content"}`` strings
          (user / assistant / system); media in ``images`` / ``videos`` (a list, or one string).
openai    ``messages`` whose ``content`` is a string or a list of parts: ``text`` (and the Responses
          API's ``input_text`` / ``output_text``), ``image_url`` (``{"url": ..}`` or a string),
          ``input_image``, ``image`` (``"image"``, ``"url"`` or ``"path"`` key), ``video``,
          ``video_url``. An ``image`` / ``video`` part with no file takes the next entry of the record's
          ``images`` / ``videos`` list (TRL's layout). Text parts are joined with nothing in between,
          as Qwen2-VL's chat template renders them. Per-part extras such as ``max_pixels`` or
          ``resized_height`` are dropped: the plugin's budgets are set once, in ``qwenvl:``.

Auto-detection: ``conversations`` with ``image`` / ``video`` is llava, without is sharegpt;
``messages`` with any content list is openai; ``messages`` of strings with ``images`` / ``videos``
is sharegpt, without is openai (the two read string content the same way, except that sharegpt
treats ``<image>`` as a placeholder).

What a record becomes
---------------------
``{"messages": [{"role": "system" | "user" | "assistant", "content": ".. <image_no_1> .."}],
"images": [..], "videos": [..]}`` (an empty list is left out). Every other top-level key (``id``,
``system`` once folded into the first turn, ...) is dropped.

- Placeholders: the k-th ``<image>`` of the conversation (all turns, in order) is ``images[k-1]``,
  and likewise ``<video>``; each becomes ``<image_no_N>`` / ``<video_no_N>`` where N is the file's
  position in the output record's own list. Identical paths are listed once, so a repeated file
  gives a repeated marker. The placeholder count must equal the media count.
- A record with media but no placeholder of that kind at all gets them at the very start of its
  first user turn, videos before images, with no separator: what LLaMA-Factory's chat engines do
  (``messages[0]["content"] = IMAGE_PLACEHOLDER * len(images) + ...``, then the same for videos).
  Its training path refuses such a record instead; convert prints a note with the count.
- Media paths are kept as written, so relative paths resolve against the output file's folder (or
  ``qwenvl.media_dir``). ``--media-root DIR`` says the input's relative paths are relative to DIR
  and rewrites them relative to the output file's folder (``os.path.relpath``). ``file://`` URLs
  become plain paths. http(s) and other remote URLs and ``data:`` URLs are refused: the plugin
  reads media from disk.
- Each output record is parsed again with the plugin's own `records.parse_line` /
  `records.record_shape` and `markers.split_markers` / `markers.resolve_media`, so what convert
  writes is what preprocessing accepts (roles, an assistant turn, every listed file used).

Refused, each reported as ``FILE:LINE: reason: detail`` (``FILE:record N``, 1-based, for a ``.json``
array): unparsable JSON, an unknown format, an empty conversation, an unknown role, a tool turn
(LLaMA-Factory's observation / function_call, OpenAI's tool / tool_calls: the plugin's messages have
no tool role), placeholder and media counts that differ, text that already contains
``<image_no_`` / ``<video_no_`` (marker or prose? ambiguous) or a literal vision token, remote or
inline media, and, with ``--check-media``, a file that does not exist.

``--on-bad-record error`` (default) reads the whole input, lists every problem and writes nothing;
``skip`` writes the good records and lists the bad ones. Output goes to a temporary file in the
output's folder, renamed over OUT only at the end, so OUT is never half written. JSONL input is
streamed line by line (blank lines are skipped); a ``.json`` array is loaded whole.

`export` is the inverse for ``messages`` records: markers become ``<image>`` / ``<video>``
placeholders with ``images`` / ``videos`` listed once per occurrence (sharegpt:
``{"conversations": [{"from": "system" | "human" | "gpt", "value": ..}], ...}``), or content parts
``{"type": "text" | "image" | "video", ...}`` (openai; a turn without media keeps string content).
OUT ending in ``.json`` is written as a JSON array, anything else as JSONL.

Exit status: 0 written; 1 bad records under ``error``, an unreadable input file, or no record left;
2 usage errors.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .cli import DEFAULT_MAX_LISTED, PROG, UsageError
from .errors import RecordError
from .markers import Marker, markers_in, resolve_media, split_markers
from .records import VISION_TOKENS, parse_line, record_shape

INPUT_FORMATS = ("llava", "sharegpt", "openai")
EXPORT_FORMATS = ("sharegpt", "openai")
POLICIES = ("error", "skip")
KINDS = ("image", "video")
PLACEHOLDERS = {"image": "<image>", "video": "<video>"}

# LLaMA-Factory's default sharegpt tags (plus the role names themselves) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
EXPORT_SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
CHAT_ROLES = ("system", "user", "assistant")
TOOL_ROLES = ("observation", "function_call", "function", "tool", "ipython")

_TEXT_PARTS = ("text", "input_text", "output_text")
_MEDIA_PARTS = {"image": "image", "image_url": "image", "input_image": "image", "video": "video", "video_url": "video"}
_AUDIO_PARTS = ("audio", "input_audio", "audio_url", "file", "input_file")
_MARKER_PREFIXES = ("<image_no_", "<video_no_")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class ConvertError(Exception):
    """One bad input record: a reason category, a detail that says how to fix it, and FILE:LINE."""

    def __init__(self, reason: str, detail: str, location: str | None = None):
        self.reason = reason
        self.detail = detail
        self.location = location
        super().__init__(reason, detail)

    def at(self, location: str) -> "ConvertError":
        if self.location is None:
            self.location = location
        return self

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.reason}: {self.detail}"


def _from_record_error(err: RecordError, prefix: str = "") -> ConvertError:
    """The plugin's own verdict on a record, as a ConvertError (same reason value, same detail)."""
    text = str(err)  # "reason: detail (marker M, path P)": no location is attached here
    detail = text.split(": ", 1)[1] if ": " in text else text
    return ConvertError(err.reason.value, prefix + detail)


def _describe(value: object) -> str:
    return "an empty string" if value == "" else f"{type(value).__name__} {value!r:.60}"


# ------------------------------------------------------------------------------------ media paths


@dataclass(frozen=True)
class MediaPaths:
    """How an input's media reference is written into the output record.

    `media_root` (absolute) set: relative paths are re-based from it onto `out_dir` (absolute).
    """

    out_dir: str = "."
    media_root: str | None = None

    def __call__(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise ConvertError("wrong_type", f"{where} must be a non-empty path string, got {_describe(value)}")
        path = local_path(value, where)
        if self.media_root is not None and not os.path.isabs(path):
            path = os.path.relpath(os.path.join(self.media_root, path), self.out_dir)
        return path


def local_path(value: str, where: str) -> str:
    """A media reference as a local path: `file://` URLs unwrapped; remote and `data:` URLs refused."""
    if value[:5].lower() == "data:":
        raise ConvertError(
            "inline_media",
            f"{where} is an inline data: URL ({value:.40}...); the plugin reads media from files: "
            "decode it into a file and give its path",
        )
    if _URL.match(value):
        parts = urllib.parse.urlsplit(value)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConvertError(
                    "remote_media",
                    f"{where} is a file URL on host {parts.netloc!r} ({value:.80}); copy the file to this "
                    "machine and give its local path",
                )
            return urllib.request.url2pathname(parts.path)
        raise ConvertError(
            "remote_media",
            f"{where} is a remote URL ({value:.80}); the plugin reads media from disk: download the "
            "file and give its local path",
        )
    return value


class _MediaLists:
    """One output record's `images` / `videos`, each path listed once, handing out markers."""

    def __init__(self, paths: MediaPaths):
        self.paths = paths
        self.lists: dict[str, list[str]] = {"image": [], "video": []}
        self._number: dict[str, dict[str, int]] = {"image": {}, "video": {}}

    def marker(self, kind: str, value: object, where: str) -> str:
        path = self.paths(value, where)
        number = self._number[kind].get(path)
        if number is None:
            self.lists[kind].append(path)
            number = self._number[kind][path] = len(self.lists[kind])
        return Marker(kind, number).text  # type: ignore[arg-type]

    def record(self, messages: list[dict]) -> dict:
        out: dict = {"messages": messages}
        for kind in KINDS:
            if self.lists[kind]:
                out[f"{kind}s"] = self.lists[kind]
        return out


def _media_entries(record: dict, key: str) -> list[tuple[object, str]]:
    """A record's media field as (entry, where) pairs: absent/null/[] -> none, one string -> one."""
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, f"`{key}`")]
    if not isinstance(value, list):
        raise ConvertError("wrong_type", f"`{key}` must be a list of paths, got {_describe(value)}")
    for index, entry in enumerate(value):
        if isinstance(entry, list):
            raise ConvertError(
                "unsupported_content",
                f"`{key}[{index}]` is a list (video frames?); the plugin reads video files: encode the frames "
                "into a video file and list its path",
            )
    return [(entry, f"`{key}[{index}]`") for index, entry in enumerate(value)]


def _check_text(text: str, where: str) -> None:
    for prefix in _MARKER_PREFIXES:
        if prefix in text:
            raise ConvertError(
                "marker_in_source",
                f"{where} already contains {prefix!r}, which is the plugin's marker syntax, so it is ambiguous "
                "whether it is a marker or prose; if the file is already marker JSONL use it as it is, "
                "otherwise reword that text",
            )
    for token in VISION_TOKENS:
        if token in text:
            raise ConvertError(
                "vision_token_in_text",
                f"{where} contains the literal token {token}; place media with placeholders or content parts "
                "and remove vision tokens from the text",
            )


# -------------------------------------------------------------------------------- record formats


def detect_format(record: dict) -> str:
    """llava, sharegpt or openai for one record (see the module docstring); ConvertError if none fits."""
    if "conversations" in record:
        return "llava" if ("image" in record or "video" in record) else "sharegpt"
    if "messages" in record:
        messages = record["messages"]
        if isinstance(messages, list) and any(
            isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages
        ):
            return "openai"
        return "sharegpt" if ("images" in record or "videos" in record) else "openai"
    hint = ""
    if any(key in record for key in ("text", "prompt", "completion")):
        hint = "; a `text` or `prompt`/`completion` record is already the plugin's format: use it as it is"
    raise ConvertError(
        "unknown_format",
        f"no `conversations` or `messages` (keys: {', '.join(sorted(record)) or 'none'}); expected a LLaVA, "
        f"LLaMA-Factory sharegpt or OpenAI-style chat record{hint}",
    )


def _turns(record: dict, keys: tuple[str, ...], fmt: str) -> tuple[str, list]:
    key = next((k for k in keys if k in record), None)
    if key is None:
        raise ConvertError(
            "unknown_format",
            f"no {' or '.join(f'`{k}`' for k in keys)} list, which a {fmt} record keeps its turns in "
            f"(keys: {', '.join(sorted(record)) or 'none'}); use --from auto or the record's real format",
        )
    turns = record[key]
    if turns is None or turns == []:
        raise ConvertError(
            "empty_conversation", f"`{key}` is empty; a record needs at least a user turn and an assistant turn"
        )
    if not isinstance(turns, list):
        raise ConvertError("wrong_type", f"`{key}` must be a list of turns, got {_describe(turns)}")
    return key, turns


def _role(value: object, where: str, accepted: dict[str, str] | tuple[str, ...]) -> str:
    if isinstance(value, str) and value in accepted:
        return accepted[value] if isinstance(accepted, dict) else value
    if isinstance(value, str) and value in TOOL_ROLES:
        raise ConvertError(
            "tool_turn",
            f"{where} is a tool turn ({value!r}); the plugin's `messages` have system, user and assistant "
            "turns only: drop the tool turns or rewrite them as user / assistant text",
        )
    raise ConvertError("unknown_role", f"{where} is {value!r}; use one of {', '.join(accepted)}")


def from_sharegpt(record: dict, paths: MediaPaths, *, llava: bool = False) -> tuple[dict, list[str]]:
    """A LLaVA or LLaMA-Factory sharegpt record -> (marker record, notes)."""
    fmt = "llava" if llava else "sharegpt"
    key, turns = _turns(record, ("conversations",) if llava else ("conversations", "messages"), fmt)
    role_key, content_key, roles = (
        ("from", "value", SHAREGPT_ROLES) if key == "conversations" else ("role", "content", CHAT_ROLES)
    )
    messages: list[dict] = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise ConvertError("wrong_type", f"{where} must be an object with `{role_key}` and `{content_key}`")
        if role_key not in turn or content_key not in turn:
            raise ConvertError("missing_field", f"{where} needs `{role_key}` and `{content_key}`")
        role = _role(turn[role_key], f"{where}.{role_key}", roles)
        content = turn[content_key]
        if not isinstance(content, str):
            hint = ""
            if isinstance(content, list):
                hint = " (a list of content parts is the openai format: use --from openai or auto)"
            raise ConvertError("wrong_type", f"{where}.{content_key} must be a string, got {_describe(content)}{hint}")
        _check_text(content, f"{where}.{content_key}")
        messages.append({"role": role, "content": content})

    system = record.get("system")
    if system not in (None, ""):
        if not isinstance(system, str):
            raise ConvertError("wrong_type", f"`system` must be a string, got {_describe(system)}")
        _check_text(system, "`system`")
        if messages[0]["role"] == "system":
            if messages[0]["content"] != system:
                raise ConvertError(
                    "ambiguous_system",
                    f"the record has both a top-level `system` and a different system turn in `{key}`; keep one",
                )
        else:
            messages.insert(0, {"role": "system", "content": system})

    media = {kind: _media_entries(record, kind if llava else f"{kind}s") for kind in KINDS}
    placeholders = dict(PLACEHOLDERS)
    if llava and media["video"] and not media["image"] and not _count(messages, "<video>") and _count(messages, "<image>"):
        placeholders = {"video": "<image>"}  # LLaVA-Video's convention
    notes: list[str] = []
    for kind, placeholder in placeholders.items():
        found, listed = _count(messages, placeholder), len(media[kind])
        if listed and not found:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise ConvertError(
                    "placeholder_mismatch",
                    f"the record lists {listed} {kind}(s) but has no {placeholder} placeholder and no user turn to put them in",
                )
            first_user["content"] = placeholder * listed + first_user["content"]
            notes.append(f"prepended:{kind}")
        elif found != listed:
            field_name = kind if llava else f"{kind}s"
            raise ConvertError(
                "placeholder_mismatch",
                f"{found} {placeholder} placeholder(s) in the conversation but {listed} {kind}(s) in `{field_name}`; "
                f"the k-th {placeholder} is the k-th entry, so add or remove placeholders or files until they match",
            )

    out = _MediaLists(paths)
    kind_of = {placeholder: kind for kind, placeholder in placeholders.items()}
    pattern = re.compile("|".join(re.escape(p) for p in kind_of))
    taken: Counter = Counter()

    def to_marker(match: re.Match) -> str:
        kind = kind_of[match.group(0)]
        value, where = media[kind][taken[kind]]
        taken[kind] += 1
        return out.marker(kind, value, where)

    for message in messages:
        message["content"] = pattern.sub(to_marker, message["content"])
    return out.record(messages), notes


def _count(messages: list[dict], placeholder: str) -> int:
    return sum(message["content"].count(placeholder) for message in messages)


def from_openai(record: dict, paths: MediaPaths) -> tuple[dict, list[str]]:
    """An OpenAI-style record (string or content-list messages) -> (marker record, notes)."""
    key, turns = _turns(record, ("messages",), "openai")
    pool = {kind: _media_entries(record, f"{kind}s") for kind in KINDS}  # for parts without a file
    taken: Counter = Counter()
    out = _MediaLists(paths)
    messages: list[dict] = []
    for index, message in enumerate(turns):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ConvertError("wrong_type", f"{where} must be an object with `role` and `content`")
        if "role" not in message:
            raise ConvertError("missing_field", f"{where} needs `role` and `content`")
        role = _role(message["role"], f"{where}.role", CHAT_ROLES)
        if message.get("tool_calls"):
            raise ConvertError(
                "tool_turn",
                f"{where} carries `tool_calls`; the plugin's `messages` have no tool calls: drop the tool "
                "turns or rewrite them as assistant text",
            )
        if "content" not in message:
            raise ConvertError("missing_field", f"{where} needs `role` and `content`")
        content = message["content"]
        if isinstance(content, str):
            _check_text(content, f"{where}.content")
            text = content
        elif isinstance(content, list):
            pieces = []
            for number, part in enumerate(content):
                pieces.append(_part_text(part, f"{where}.content[{number}]", pool, taken, out))
            text = "".join(pieces)
        else:
            raise ConvertError("wrong_type", f"{where}.content must be a string or a list of parts, got {_describe(content)}")
        messages.append({"role": role, "content": text})
    for kind in KINDS:
        if taken[kind] != len(pool[kind]):
            raise ConvertError(
                "placeholder_mismatch",
                f"`{kind}s` lists {len(pool[kind])} file(s) but {taken[kind]} {kind} part(s) without a file of "
                f"their own take them (in order); add {{\"type\": \"{kind}\"}} parts or remove files until they match",
            )
    return out.record(messages), []


def _part_text(part: object, where: str, pool: dict, taken: Counter, out: _MediaLists) -> str:
    """One content part as marker-record text: its text, or the marker of its media."""
    if isinstance(part, str):
        _check_text(part, where)
        return part
    if not isinstance(part, dict):
        raise ConvertError("wrong_type", f"{where} must be an object with a `type`, got {_describe(part)}")
    kind_name = part.get("type")
    if kind_name in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise ConvertError("wrong_type", f"{where}.text must be a string, got {_describe(text)}")
        _check_text(text, f"{where}.text")
        return text
    if kind_name in _MEDIA_PARTS:
        kind = _MEDIA_PARTS[kind_name]
        value, value_where = _part_source(part, kind_name, where)
        if value is None:
            if taken[kind] >= len(pool[kind]):
                raise ConvertError(
                    "placeholder_mismatch",
                    f"{where} is a {kind} part without a file, and the record's `{kind}s` list has only "
                    f"{len(pool[kind])} entr{'y' if len(pool[kind]) == 1 else 'ies'} for such parts; give the part "
                    f"a path ({{\"type\": \"{kind}\", \"{kind}\": \"a.{'jpg' if kind == 'image' else 'mp4'}\"}}) "
                    f"or add the file to `{kind}s`",
                )
            value, value_where = pool[kind][taken[kind]]
            taken[kind] += 1
        return out.marker(kind, value, value_where)
    if kind_name in _AUDIO_PARTS:
        raise ConvertError(
            "unsupported_content", f"{where} is a {kind_name!r} part; the plugin trains on text, images and videos only"
        )
    raise ConvertError(
        "unsupported_content",
        f"{where} has type {kind_name!r}; supported parts are text, image, image_url, input_image, video and video_url",
    )


def _part_source(part: dict, kind_name: str, where: str) -> tuple[object, str]:
    """The file a media part names, and where in the part it was; (None, where) when it names none."""
    if "file_id" in part or "base64" in part:
        key = "file_id" if "file_id" in part else "base64"
        raise ConvertError("inline_media", f"{where} gives its media as `{key}`; the plugin reads media from files: give a path")
    if kind_name in ("image_url", "video_url", "input_image"):
        value = part.get(kind_name if kind_name != "input_image" else "image_url")
        key = kind_name if kind_name != "input_image" else "image_url"
        if isinstance(value, dict):
            return value.get("url"), f"{where}.{key}.url"
        if value is None:
            example = json.dumps({"type": kind_name, key: {"url": "a.jpg"}})
            raise ConvertError("missing_field", f"{where} has no `{key}`; write e.g. {example}")
        return value, f"{where}.{key}"
    for key in (kind_name, "url", "path"):
        if part.get(key) is not None:
            value = part[key]
            if kind_name == "video" and isinstance(value, list):
                raise ConvertError(
                    "unsupported_content",
                    f"{where}.video is a list of frames; the plugin reads video files: encode the frames into a "
                    "video file and give its path",
                )
            return value, f"{where}.{key}"
    return None, where


# --------------------------------------------------------------------------- one record, each way


def convert_record(
    record: object, fmt: str = "auto", paths: MediaPaths | None = None, *, media_dir: str | os.PathLike | None = None
) -> tuple[dict, str, list[str]]:
    """One input record -> (marker record, the format it was read as, notes). Raises ConvertError.

    The result has been accepted by the plugin's own parsing (`validate_marker_record`) against
    `media_dir` (default: `paths.out_dir`), with the media-dir safety rule off: only the config knows
    the real media_dir.
    """
    paths = paths or MediaPaths()
    if not isinstance(record, dict):
        raise ConvertError("wrong_type", f"a record must be a JSON object, got a JSON {type(record).__name__}")
    if fmt not in ("auto", *INPUT_FORMATS):
        raise ValueError(f"unknown input format {fmt!r}")
    used = detect_format(record) if fmt == "auto" else fmt
    if used == "openai":
        out, notes = from_openai(record, paths)
    else:
        out, notes = from_sharegpt(record, paths, llava=used == "llava")
    try:
        validate_marker_record(out, media_dir if media_dir is not None else paths.out_dir)
    except RecordError as err:
        raise _from_record_error(err, "the converted record is refused by the plugin: ") from None
    return out, used, notes


def validate_marker_record(record: dict, media_dir: str | os.PathLike = ".") -> tuple[dict, str]:
    """Parse a marker record the way preprocessing does; returns (parsed record, shape). Raises RecordError.

    Runs the serialized line through `parse_line` and `record_shape`, every text through
    `split_markers`, and the markers through `resolve_media` with the record's own lists (no
    templates, no media-dir refusal): malformed markers, missing or unused list entries, bad roles
    and a conversation without an assistant turn all fail here.
    """
    parsed = parse_line(json.dumps(record, ensure_ascii=False))
    shape = record_shape(parsed)
    markers: list[Marker] = []
    for text in _texts(parsed, shape):
        markers.extend(markers_in(split_markers(text)))
    resolve_media(
        markers,
        images=parsed.get("images"),
        videos=parsed.get("videos"),
        image_template=None,
        video_template=None,
        media_dir=Path(media_dir),
        allow_outside_media_dir=True,
    )
    return parsed, shape


def _texts(record: dict, shape: str) -> list[str]:
    if shape == "text":
        return [record["text"]]
    if shape == "prompt+completion":
        return [record["prompt"], record["completion"]]
    return [message["content"] for message in record["messages"]]


def _chat_segments(record: object, media_dir) -> tuple[dict, list[tuple[str, list]]]:
    """A marker `messages` record -> (parsed, [(role, segments)]), with markers as (kind, path)."""
    if not isinstance(record, dict):
        raise ConvertError("wrong_type", f"a line must be a JSON object, got a JSON {type(record).__name__}")
    try:
        shape = record_shape(record)
        if shape != "messages":
            raise ConvertError(
                "unsupported_shape",
                f"only `messages` records can be exported, this is a `{shape}` record: `text` and "
                "`prompt`/`completion` records have no chat turns",
            )
        turns = []
        for message in record["messages"]:
            segments = split_markers(message["content"])
            for marker in markers_in(segments):
                if record.get(f"{marker.kind}s") is None:
                    raise ConvertError(
                        "no_media_source",
                        f"{marker.text} has no `{marker.kind}s` list to take its file from; export needs the "
                        f"record's own list (records that rely on `qwenvl.{marker.kind}_template` cannot be exported)",
                    )
            turns.append((message["role"], segments))
        validate_marker_record(record, media_dir)
    except RecordError as err:
        raise _from_record_error(err) from None
    lists = {kind: record.get(f"{kind}s") or [] for kind in KINDS}
    resolved = [
        (role, [(s.kind, lists[s.kind][s.number - 1]) if isinstance(s, Marker) else s for s in segments])
        for role, segments in turns
    ]
    return record, resolved


def to_sharegpt(record: object, media_dir: str | os.PathLike = ".") -> dict:
    """A marker `messages` record -> LLaMA-Factory sharegpt (`conversations` of from/value, placeholders)."""
    _, turns = _chat_segments(record, media_dir)
    conversations = []
    media: dict[str, list[str]] = {"image": [], "video": []}
    for index, (role, segments) in enumerate(turns):
        if role == "system" and index:
            raise ConvertError(
                "unsupported_shape",
                f"messages[{index}] is a system turn after the first turn; LLaMA-Factory reads a system prompt "
                "only as the first turn: move it first or merge it into a user turn",
            )
        pieces = []
        for segment in segments:
            if isinstance(segment, tuple):
                kind, path = segment
                pieces.append(PLACEHOLDERS[kind])
                media[kind].append(path)
                continue
            for placeholder in PLACEHOLDERS.values():
                if placeholder in segment:
                    raise ConvertError(
                        "placeholder_in_text",
                        f"messages[{index}].content contains the literal text {placeholder}, which LLaMA-Factory "
                        "would read as a media placeholder; reword it, or export --to openai",
                    )
            pieces.append(segment)
        conversations.append({"from": EXPORT_SHAREGPT_ROLES[role], "value": "".join(pieces)})
    out: dict = {"conversations": conversations}
    for kind in KINDS:
        if media[kind]:
            out[f"{kind}s"] = media[kind]
    return out


def to_openai(record: object, media_dir: str | os.PathLike = ".") -> dict:
    """A marker `messages` record -> OpenAI-style messages (content parts where a turn has media)."""
    _, turns = _chat_segments(record, media_dir)
    messages = []
    for role, segments in turns:
        if not any(isinstance(segment, tuple) for segment in segments):
            messages.append({"role": role, "content": "".join(segments)})
            continue
        parts = []
        for segment in segments:
            if isinstance(segment, tuple):
                kind, path = segment
                parts.append({"type": kind, kind: path})
            else:
                parts.append({"type": "text", "text": segment})
        messages.append({"role": role, "content": parts})
    return {"messages": messages}


EXPORTERS = {"sharegpt": to_sharegpt, "openai": to_openai}


# ------------------------------------------------------------------------------------------- files


def _iter_input(path: Path, name: str, *, skip_blank: bool) -> tuple[int, Iterator[tuple[str, object]]]:
    """(record count for the progress bar, iterator of (location, record or ConvertError)).

    A file whose first non-blank character is `[` is a JSON array, loaded whole (an unreadable one
    raises ConvertError at FILE:LINE); anything else is JSONL, streamed line by line.
    """
    with open(path, "rb") as raw:
        head = raw.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ConvertError(
                "invalid_json", f"not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8", name
            ) from None
        except json.JSONDecodeError as exc:
            raise ConvertError(
                "invalid_json",
                f"the file is not a valid JSON array ({exc.msg} at column {exc.colno}); fix it, or write one "
                "JSON object per line (JSONL) so that one bad record does not hide the rest",
                f"{name}:{exc.lineno}",
            ) from None
        return len(records), ((f"{name}:record {index}", item) for index, item in enumerate(records, start=1))

    return _count_lines(path), _iter_jsonl(path, name, skip_blank=skip_blank)


def _count_lines(path: Path) -> int:
    """Newlines in the file, for the progress bar, reading 64 KiB at a time."""
    with open(path, "rb") as raw:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 16), b""))


def _iter_jsonl(path: Path, name: str, *, skip_blank: bool) -> Iterator[tuple[str, object]]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.removesuffix("\n")
            location = f"{name}:{number}"
            if skip_blank and not line.strip():
                continue
            if not line.isascii() and re.search("[\udc80-\udcff]", line):
                yield location, ConvertError("invalid_json", "line is not valid UTF-8; re-save the file as UTF-8")
                continue
            try:
                yield location, parse_line(line)
            except RecordError as err:
                yield location, _from_record_error(err)


class _AtomicOutput:
    """A temporary file beside OUT, renamed over it by `commit()`; removed if never committed."""

    def __init__(self, path: Path, *, json_array: bool = False):
        self.path = path
        self.json_array = json_array
        self.count = 0
        handle, self.temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.file = os.fdopen(handle, "w", encoding="utf-8", newline="\n")
        if json_array:
            self.file.write("[")

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False)
        if self.json_array:
            self.file.write(("\n" if not self.count else ",\n") + line)
        else:
            self.file.write(line + "\n")
        self.count += 1

    def commit(self) -> None:
        if self.json_array:
            self.file.write("\n]\n" if self.count else "]\n")
        self.file.close()
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temp, 0o666 & ~umask)
        os.replace(self.temp, self.path)

    def __enter__(self) -> "_AtomicOutput":
        return self

    def __exit__(self, *exc) -> None:
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.temp):
            os.unlink(self.temp)


@dataclass
class Tally:
    """What one run did: counts, the first `max_listed` problems, notes with a first example."""

    max_listed: int
    read: int = 0
    written: int = 0
    images: int = 0
    videos: int = 0
    bad: Counter = field(default_factory=Counter)  # reason -> count
    listed: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    first_note: dict[str, str] = field(default_factory=dict)

    @property
    def bad_count(self) -> int:
        return sum(self.bad.values())

    def problem(self, err: ConvertError) -> None:
        self.bad[err.reason] += 1
        if len(self.listed) < self.max_listed:
            self.listed.append(str(err))

    def good(self, record: dict) -> None:
        self.written += 1
        self.images += len(record.get("images") or ())
        self.videos += len(record.get("videos") or ())

    def note(self, key: str, location: str) -> None:
        self.notes[key] += 1
        self.first_note.setdefault(key, location)


def _check_files(in_path: Path, out_path: Path, *, jsonl_only: bool) -> None:
    if not in_path.is_file():
        what = "a folder" if in_path.is_dir() else "not found"
        raise UsageError(f"input file {what}: {in_path}")
    if out_path.is_dir():
        raise UsageError(f"output {out_path} is a folder; name the output file, e.g. {out_path / 'data.jsonl'}")
    if not out_path.parent.is_dir():
        raise UsageError(f"the output's folder does not exist: {out_path.parent}; create it first")
    if jsonl_only and out_path.suffix != ".jsonl":
        raise UsageError(f"the output must be a .jsonl file (the plugin reads marker JSONL), got {out_path.name!r}")
    if out_path.exists() and out_path.resolve() == in_path.resolve():
        raise UsageError(f"input and output are the same file ({in_path}); write to a new file")


def _progress(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=" records", file=sys.stderr, disable=None if progress is None else not progress,
        mininterval=0.5, dynamic_ncols=True,
    )  # fmt: skip


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _report_problems(command: str, tally: Tally, in_name: str, out_path: Path, policy: str) -> None:
    """Bad records to stderr: every listed FILE:LINE message, then what was done about them."""
    if not tally.bad_count:
        return
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(tally.bad.items(), key=lambda kv: (-kv[1], kv[0])))
    verdict = f"{out_path} not written" if policy == "error" else "skipped"
    print(f"{PROG} {command}: {_plural(tally.bad_count, 'bad record')} in {in_name} ({by_reason}): {verdict}", file=sys.stderr)
    for message in tally.listed:
        print(f"  {message}", file=sys.stderr)
    if tally.bad_count > len(tally.listed):
        print(f"  ... and {tally.bad_count - len(tally.listed)} more (raise --max-listed to list them)", file=sys.stderr)
    if policy == "error":
        print("Fix them, or pass --on-bad-record skip to write the good records only.", file=sys.stderr)


def convert_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    fmt: str = "auto",
    media_root: str | os.PathLike | None = None,
    check_media: bool = False,
    on_bad_record: str = "error",
    max_listed: int = DEFAULT_MAX_LISTED,
    progress: bool | None = None,
) -> int:
    """Convert one file to marker JSONL; prints a summary (stdout) and problems (stderr); returns the exit status."""
    in_path, out_path = Path(in_path), Path(out_path)
    _check_files(in_path, out_path, jsonl_only=True)
    if fmt not in ("auto", *INPUT_FORMATS):
        raise UsageError(f"--from must be auto or one of {', '.join(INPUT_FORMATS)}, got {fmt!r}")
    if on_bad_record not in POLICIES:
        raise UsageError(f"--on-bad-record must be error or skip, got {on_bad_record!r}")
    if max_listed < 0:
        raise UsageError("--max-listed must be >= 0")
    out_dir = os.path.abspath(out_path.parent)
    if media_root is not None:
        if not Path(media_root).is_dir():
            raise UsageError(f"--media-root is not a folder: {media_root}")
        media_root = os.path.abspath(media_root)
    paths = MediaPaths(out_dir=out_dir, media_root=media_root)
    name = str(in_path)
    tally = Tally(max_listed=max_listed)
    found: dict[str, bool] = {}  # path -> exists, for --check-media

    try:
        total, items = _iter_input(in_path, name, skip_blank=True)
    except ConvertError as err:
        print(f"{PROG} convert: {err}", file=sys.stderr)
        print(f"{in_path}: unreadable, {out_path} not written")
        return 1
    with _AtomicOutput(out_path) as output, _progress(total, f"converting {in_path.name}", progress) as bar:
        for location, item in items:
            bar.update(1)
            tally.read += 1
            try:
                if isinstance(item, ConvertError):
                    raise item
                record, used, notes = convert_record(item, fmt, paths)
                if check_media:
                    _check_media(record, out_dir, found, media_root is not None)
            except ConvertError as err:
                tally.problem(err.at(location))
                continue
            tally.formats[used] += 1
            for key in notes:
                tally.note(key, location)
            if not (tally.bad_count and on_bad_record == "error"):  # nothing will be written: stop writing
                output.write(record)
            tally.good(record)
            _note_paths(record, tally, location)
        keep = tally.written and not (tally.bad_count and on_bad_record == "error")
        if keep:
            output.commit()

    _report_problems("convert", tally, name, out_path, on_bad_record)
    _print_notes(tally, in_path, out_path, media_root is not None)
    if not keep:
        why = "no record to write" if not tally.written and not tally.bad_count else f"{_plural(tally.bad_count, 'bad record')}"
        print(f"{name}: {_plural(tally.read, 'record')} read, {tally.written} ok, {why}: {out_path} not written")
        return 1
    formats = ", ".join(f"{fmt_} {count}" for fmt_, count in sorted(tally.formats.items()))
    skipped = f"; {_plural(tally.bad_count, 'bad record')} skipped" if tally.bad_count else ""
    print(
        f"converted {_plural(tally.written, 'record')} from {name} to {out_path}: {_plural(tally.images, 'image')}, "
        f"{_plural(tally.videos, 'video')} (read as {formats}){skipped}"
    )
    return 0


def _check_media(record: dict, out_dir: str, found: dict[str, bool], rebased: bool) -> None:
    for kind in KINDS:
        for index, path in enumerate(record.get(f"{kind}s") or ()):
            full = os.path.join(out_dir, path)  # an absolute path stays as it is
            if full not in found:
                found[full] = os.path.isfile(full)
            if not found[full]:
                hint = "" if rebased else ", or pass --media-root DIR if the input's paths are relative to DIR"
                raise ConvertError(
                    "missing_file",
                    f"{kind}s[{index}] {path!r} is not a file ({full} does not exist); fix the path{hint}",
                )


def _note_paths(record: dict, tally: Tally, location: str) -> None:
    relative = [path for kind in KINDS for path in record.get(f"{kind}s") or () if not os.path.isabs(path)]
    if relative:
        tally.note("relative", location)
    if any(os.path.normpath(path).split(os.sep)[0] == ".." for path in relative):
        tally.note("outside", location)


def _print_notes(tally: Tally, in_path: Path, out_path: Path, rebased: bool) -> None:
    def note(key: str, text: str) -> None:
        if tally.notes[key]:
            print(f"note: {_plural(tally.notes[key], 'record')} {text} (first: {tally.first_note[key]})", file=sys.stderr)

    note("prepended:image", "had images but no <image> placeholder: their markers were put at the start of "
         "the first user turn, as LLaMA-Factory's chat engines do")  # fmt: skip
    note("prepended:video", "had videos but no <video> placeholder: their markers were put at the start of "
         "the first user turn, as LLaMA-Factory's chat engines do")  # fmt: skip
    note("outside", "had media paths outside the output's folder: the plugin refuses them unless `qwenvl.media_dir` "
         "contains them or `qwenvl.allow_outside_media_dir: true` is set")  # fmt: skip
    if not rebased and os.path.abspath(in_path.parent) != os.path.abspath(out_path.parent):
        note("relative", f"had relative media paths, kept as written: they resolve against {out_path.parent} (or "
             "`qwenvl.media_dir`); pass --media-root DIR if they are relative to another folder")  # fmt: skip


def export_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    to: str,
    on_bad_record: str = "error",
    max_listed: int = DEFAULT_MAX_LISTED,
    progress: bool | None = None,
) -> int:
    """Write a marker JSONL file's `messages` records as sharegpt or openai records; returns the exit status."""
    in_path, out_path = Path(in_path), Path(out_path)
    _check_files(in_path, out_path, jsonl_only=False)
    if to not in EXPORT_FORMATS:
        raise UsageError(f"--to must be one of {', '.join(EXPORT_FORMATS)}, got {to!r}")
    if on_bad_record not in POLICIES:
        raise UsageError(f"--on-bad-record must be error or skip, got {on_bad_record!r}")
    if max_listed < 0:
        raise UsageError("--max-listed must be >= 0")
    exporter = EXPORTERS[to]
    name = str(in_path)
    media_dir = in_path.parent
    tally = Tally(max_listed=max_listed)
    with _AtomicOutput(out_path, json_array=out_path.suffix == ".json") as output, _progress(
        _count_lines(in_path), f"exporting {in_path.name}", progress
    ) as bar:  # fmt: skip
        # Marker JSONL is read as the plugin reads it: a blank line is a bad record there, and here.
        for location, item in _iter_jsonl(in_path, name, skip_blank=False):
            bar.update(1)
            tally.read += 1
            try:
                if isinstance(item, ConvertError):
                    raise item
                record = exporter(item, media_dir)
            except ConvertError as err:
                tally.problem(err.at(location))
                continue
            if not (tally.bad_count and on_bad_record == "error"):
                output.write(record)
            tally.written += 1
            tally.images += len(record.get("images") or ()) + _count_parts(record, "image")
            tally.videos += len(record.get("videos") or ()) + _count_parts(record, "video")
        keep = tally.written and not (tally.bad_count and on_bad_record == "error")
        if keep:
            output.commit()

    _report_problems("export", tally, name, out_path, on_bad_record)
    if not keep:
        why = "no record to write" if not tally.written and not tally.bad_count else f"{_plural(tally.bad_count, 'bad record')}"
        print(f"{name}: {_plural(tally.read, 'record')} read, {tally.written} ok, {why}: {out_path} not written")
        return 1
    skipped = f"; {_plural(tally.bad_count, 'bad record')} skipped" if tally.bad_count else ""
    print(
        f"exported {_plural(tally.written, 'record')} from {name} to {out_path} as {to}: "
        f"{_plural(tally.images, 'image')}, {_plural(tally.videos, 'video')}{skipped}"
    )
    return 0


def _count_parts(record: dict, kind: str) -> int:
    return sum(
        1
        for message in record.get("messages") or ()
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == kind
    )

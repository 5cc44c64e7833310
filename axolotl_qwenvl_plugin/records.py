"""One JSONL line becomes one training record: token ids with exact vision pads, labels, media plan.

This is the preprocess-time stage of the pipeline. It parses the line, checks the record shape,
renders text (raw or through the chat template), resolves markers to files, probes each file
without decoding it, asks `budget` how many pad tokens each item costs and emits:

    input_ids / attention_mask / labels   exact lengths, so Axolotl's sequence_len filter is right
    qwenvl_media                          JSON list: one plan per marker occurrence, in order
    qwenvl_location                       "FILE:LINE", for messages raised later by the collator

The collator then only decodes pixels. `check` uses the same `RecordBuilder`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .args import QwenVLConfig
from .budget import plan_image, plan_video
from .errors import Reason, RecordError
from .markers import Marker, MediaRef, markers_in, resolve_media, split_markers
from .media import ImageInfo, VideoInfo, probe_image, probe_video

IGNORE_INDEX = -100

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

_SENTINEL = "\u2063qwenvl-assistant-turn\u2063"  # never occurs in real text
_END_OF_TURN = "<|im_end|>"



@dataclass(frozen=True)
class Piece:
    """A run of rendered text and whether its tokens are trained on."""

    text: str
    trainable: bool


@dataclass
class RecordBuilder:
    """Turns raw records into prepared rows. Picklable: `datasets.map` ships it to workers."""

    tokenizer: object
    processor: object
    settings: QwenVLConfig
    media_dir: Path
    sequence_len: int
    train_on_inputs: bool = False
    # Each process probes a file once, however many records use it.
    _probe_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        ids = self.tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
        unknown = [t for t, i in zip(VISION_TOKENS, ids) if i is None or i == self.tokenizer.unk_token_id]
        if unknown:
            raise ValueError(
                f"the tokenizer has no {', '.join(unknown)} token: base_model / tokenizer_config "
                "must point at a Qwen2.5-VL checkpoint"
            )
        self.vision_start_id, self.vision_end_id, self.image_pad_id, self.video_pad_id = ids

    # -- public ---------------------------------------------------------------------------------
    def build(self, record: object) -> dict:
        """A parsed record -> {input_ids, attention_mask, labels, qwenvl_media}. Raises RecordError."""
        pieces, markers = self._render(record)
        refs = resolve_media(
            markers,
            images=record.get("images"),
            videos=record.get("videos"),
            image_template=self.settings.image_template,
            video_template=self.settings.video_template,
            media_dir=self.media_dir,
            allow_outside_media_dir=self.settings.allow_outside_media_dir,
        )
        plans = [self._plan(ref, marker) for ref, marker in zip(refs, markers)]
        input_ids, labels = self._tokenize(pieces, plans)
        if len(input_ids) > self.sequence_len:
            vision = sum(plan["num_pads"] + 2 for plan in plans)
            raise RecordError(
                Reason.TOO_LONG,
                f"{len(input_ids)} tokens ({len(input_ids) - vision} text + {vision} vision) exceed "
                f"sequence_len {self.sequence_len}; raise sequence_len, or lower the qwenvl pixel "
                "budgets / video_fps / video_max_frames",
            )
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": labels,
            "qwenvl_media": json.dumps(plans),
        }

    def build_line(self, line: str, location: str) -> dict:
        """A raw JSONL line -> prepared row, or a row carrying the error (never raises RecordError)."""
        try:
            row = self.build(parse_line(line))
            row["qwenvl_error"] = ""
        except RecordError as err:
            err.at(location)
            row = {
                "input_ids": [],
                "attention_mask": [],
                "labels": [],
                "qwenvl_media": "[]",
                "qwenvl_error": json.dumps(
                    {"reason": err.reason.value, "message": str(err), "location": location}
                ),
            }
        row["qwenvl_location"] = location
        return row

    # -- rendering --------------------------------------------------------------------------------
    def _render(self, record: object) -> tuple[list[Piece], list[Marker]]:
        shape = record_shape(record)
        eos = self.tokenizer.eos_token or ""
        if shape == "text":
            pieces = [Piece(record["text"] + eos, True)]
        elif shape == "prompt+completion":
            pieces = [
                Piece(record["prompt"], self.train_on_inputs),
                Piece(record["completion"] + eos, True),
            ]
        else:
            pieces = self._render_chat(record["messages"])
        markers: list[Marker] = []
        for piece in pieces:
            markers.extend(markers_in(split_markers(piece.text)))
        return pieces, markers

    def _render_chat(self, messages: list[dict]) -> list[Piece]:
        """Render through the chat template; assistant content plus its end token is trainable.

        Each assistant turn is located by rendering the conversation up to that turn with a
        sentinel as its content: what precedes the sentinel is the exact rendered prefix. This
        needs no generation prompt and works for any template whose output for the first k turns
        is a prefix of the output for all turns.
        """
        full = self._apply_template(messages)
        pieces: list[Piece] = []
        done = 0
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            probe = self._apply_template([*messages[:k], {"role": "assistant", "content": _SENTINEL}])
            start = probe.find(_SENTINEL)
            content = message["content"]
            if start < done or not full.startswith(probe[:start]) or not full.startswith(content, start):
                raise ValueError(
                    "the chat template does not render conversations prefix by prefix, so "
                    "assistant turns cannot be located; use the Qwen2-VL template "
                    "(`chat_template: qwen2_vl`)"
                )
            # Train on the content and the end-of-turn token, not on what follows it ("\n").
            end = start + len(content)
            if full.startswith(_END_OF_TURN, end):
                end += len(_END_OF_TURN)
            pieces.append(Piece(full[done:start], self.train_on_inputs))
            pieces.append(Piece(full[start:end], True))
            done = end
        pieces.append(Piece(full[done:], self.train_on_inputs))
        return [piece for piece in pieces if piece.text]

    def _apply_template(self, messages: list[dict]) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or getattr(self.processor, "chat_template", None)
        if not template:
            raise ValueError(
                "`messages` records need a chat template, and neither the tokenizer nor the "
                "processor has one; set `chat_template: qwen2_vl` in the config"
            )
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=False
        )

    # -- media ------------------------------------------------------------------------------------
    def _plan(self, ref: MediaRef, marker: Marker) -> dict:
        try:
            info = self._probe(ref)
            if ref.kind == "image":
                plan = plan_image(self.processor, info, self.settings)
                return {"kind": "image", "path": ref.path, "marker": marker.text, **plan.__dict__}
            plan = plan_video(self.processor, info, self.settings)
            return {"kind": "video", "path": ref.path, "marker": marker.text, **plan.as_dict()}
        except RecordError as err:
            err.marker = err.marker or marker.text
            err.path = ref.source
            raise

    def _probe(self, ref: MediaRef) -> ImageInfo | VideoInfo:
        try:
            stat = os.stat(ref.path)
            key = (ref.kind, ref.path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None  # let the prober produce its precise error
        if key is not None and key in self._probe_cache:
            return self._probe_cache[key]
        info = probe_image(Path(ref.path)) if ref.kind == "image" else probe_video(Path(ref.path))
        if key is not None:
            self._probe_cache[key] = info
        return info

    # -- tokens -----------------------------------------------------------------------------------
    def _tokenize(self, pieces: list[Piece], plans: list[dict]) -> tuple[list[int], list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        next_plan = iter(plans)
        for piece in pieces:
            for segment in split_markers(piece.text):
                if isinstance(segment, Marker):
                    plan = next(next_plan)
                    pad = self.image_pad_id if plan["kind"] == "image" else self.video_pad_id
                    span = [self.vision_start_id] + [pad] * plan["num_pads"] + [self.vision_end_id]
                    input_ids.extend(span)
                    labels.extend([IGNORE_INDEX] * len(span))  # vision tokens are never in the loss
                    continue
                literal = next((token for token in VISION_TOKENS if token in segment), None)
                if literal is not None:
                    # The tokenizer would turn it into a real pad with no media behind it.
                    raise RecordError(
                        Reason.VISION_TOKEN_IN_TEXT,
                        f"the text contains the literal token {literal}; place media with "
                        "<image_no_N> / <video_no_N> markers and remove vision tokens from the text",
                    )
                ids = self.tokenizer(segment, add_special_tokens=False)["input_ids"]
                input_ids.extend(ids)
                labels.extend(ids if piece.trainable else [IGNORE_INDEX] * len(ids))
        return input_ids, labels


def parse_line(line: str) -> dict:
    """A JSONL line -> a JSON object (errors: EMPTY_LINE, INVALID_JSON, WRONG_TYPE)."""
    if not line.strip():
        raise RecordError(Reason.EMPTY_LINE, "empty line; remove it (every line must be one JSON object)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(
            Reason.INVALID_JSON, f"not valid JSON ({exc.msg} at column {exc.colno}); every line must be one JSON object"
        ) from None
    if not isinstance(record, dict):
        raise RecordError(
            Reason.WRONG_TYPE, f"a line must be a JSON object, got a JSON {type(record).__name__}"
        )
    return record


def record_shape(record: dict) -> str:
    """Which of the three shapes a record has, validating its text fields' types."""
    has = {key for key in ("text", "prompt", "completion", "messages") if key in record}
    if has == {"text"}:
        _require_str(record, "text")
        return "text"
    if has == {"prompt", "completion"}:
        _require_str(record, "prompt")
        _require_str(record, "completion")
        return "prompt+completion"
    if has == {"messages"}:
        _check_messages(record["messages"])
        return "messages"
    if has in ({"prompt"}, {"completion"}):
        missing = ({"prompt", "completion"} - has).pop()
        raise RecordError(Reason.MISSING_FIELD, f"a `{has.pop()}` record also needs `{missing}`")
    if not has:
        raise RecordError(
            Reason.UNKNOWN_SHAPE,
            f"no text field (keys: {', '.join(sorted(record)) or 'none'}); a record needs `text`, "
            "`prompt` + `completion`, or `messages`",
        )
    raise RecordError(
        Reason.UNKNOWN_SHAPE,
        f"ambiguous record with {', '.join(sorted(has))}; use exactly one shape: `text`, "
        "`prompt` + `completion`, or `messages`",
    )


def _require_str(record: dict, key: str) -> None:
    if not isinstance(record[key], str):
        raise RecordError(Reason.WRONG_TYPE, f"`{key}` must be a string, got {type(record[key]).__name__}")


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise RecordError(Reason.WRONG_TYPE, "`messages` must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RecordError(Reason.MISSING_FIELD, f"messages[{i}] needs `role` and `content`")
        if message["role"] not in ("system", "user", "assistant"):
            raise RecordError(
                Reason.WRONG_TYPE, f"messages[{i}].role is {message['role']!r}; use system, user or assistant"
            )
        if not isinstance(message["content"], str):
            raise RecordError(
                Reason.WRONG_TYPE,
                f"messages[{i}].content must be a string with markers such as <image_no_1>, "
                f"got {type(message['content']).__name__}",
            )
    if not any(message["role"] == "assistant" for message in messages):
        raise RecordError(Reason.MISSING_FIELD, "`messages` has no assistant turn, so there is nothing to learn")

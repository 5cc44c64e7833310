"""Errors about user data: each carries a reason category and, once known, where it happened.

Every stage raises `RecordError` with a `reason` from `Reason`; the stage that knows the file and
line (the dataset strategy, `check`, the collator) fills `location` in before it reaches the user,
so messages read `data.jsonl:12: missing_file: ... (marker <image_no_1>, path cats/1.jpg)`.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a record is bad. Stable names: `check` groups its report by them and tests assert them."""

    # records
    INVALID_JSON = "invalid_json"
    EMPTY_LINE = "empty_line"
    UNKNOWN_SHAPE = "unknown_shape"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    TOO_LONG = "too_long"
    # markers
    MALFORMED_MARKER = "malformed_marker"
    MARKER_OUT_OF_RANGE = "marker_out_of_range"
    NO_MEDIA_SOURCE = "no_media_source"
    UNUSED_MEDIA = "unused_media"
    PATH_OUTSIDE_MEDIA_DIR = "path_outside_media_dir"
    VISION_TOKEN_IN_TEXT = "vision_token_in_text"
    # files
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_IMAGE = "unsupported_image"
    NOT_A_VIDEO = "not_a_video"
    NO_VIDEO_STREAM = "no_video_stream"
    TOO_FEW_FRAMES = "too_few_frames"
    UNDECODABLE_VIDEO = "undecodable_video"
    # batches
    GRID_MISMATCH = "grid_mismatch"


class RecordError(Exception):
    """A data problem in one record: a reason category, a readable detail, and where it happened."""

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        marker: str | None = None,
        path: str | None = None,
        location: str | None = None,
    ):
        self.reason = Reason(reason)
        self.detail = detail
        self.marker = marker
        self.path = path
        self.location = location
        super().__init__(str(self))

    def at(self, location: str) -> "RecordError":
        """Attach `FILE:LINE` (first writer wins: the innermost stage knows best)."""
        if self.location is None:
            self.location = location
            self.args = (str(self),)
        return self

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        context = ", ".join(
            part for part in (f"marker {self.marker}" if self.marker else "", f"path {self.path}" if self.path else "") if part
        )
        return f"{where}{self.reason.value}: {self.detail}" + (f" ({context})" if context else "")

    def __reduce__(self):
        # Picklable across DataLoader worker processes with all fields (and the subclass) intact.
        return (
            _rebuild_record_error,
            (type(self), self.reason.value, self.detail, self.marker, self.path, self.location),
        )


def _rebuild_record_error(cls, reason, detail, marker, path, location) -> RecordError:
    return cls(Reason(reason), detail, marker=marker, path=path, location=location)


class MediaError(RecordError):
    """A media file that cannot be used (missing, empty, corrupt, wrong kind)."""


# Exception types whose message is the whole story: shown without a traceback.
_DATA_ERROR_NAMES = ("RecordError", "MediaError", "BadRecordsError", "QwenVLConfigError")


def clean_data_error_message(exc: BaseException) -> str | None:
    """The user-facing message of a data/config error, unwrapping DataLoader worker re-raises."""
    if type(exc).__name__ in _DATA_ERROR_NAMES:
        return str(exc)
    text = str(exc)
    # torch re-raises a worker's exception as "Caught MediaError in DataLoader worker process 0.
    # Original Traceback ...": its last line is the original message.
    if text.startswith("Caught ") and any(f"Caught {name} " in text for name in _DATA_ERROR_NAMES):
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return None


def install_clean_exit_for_data_errors() -> None:
    """Print data errors as one clear message and exit 1, instead of a Python traceback."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "_qwenvl", False):
        return

    def hook(exc_type, exc, tb):
        message = clean_data_error_message(exc)
        if message is None:
            return previous(exc_type, exc, tb)
        sys.stderr.write(
            f"\nqwenvl: stopped on a data problem:\n{message}\n"
            "Fix the record(s), or set `qwenvl.on_bad_record: skip`; "
            "`axolotl-qwenvl check CONFIG` lists every problem before training.\n"
        )
        sys.stderr.flush()  # the interpreter then exits with status 1, as for any uncaught error

    hook._qwenvl = True
    sys.excepthook = hook

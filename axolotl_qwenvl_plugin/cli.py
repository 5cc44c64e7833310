"""`axolotl-qwenvl check CONFIG.yml`: find every bad record before a GPU is touched.

    axolotl-qwenvl check cfg.yml [--max-listed N] [--no-progress]

For every dataset with `type: axolotl_qwenvl_plugin.marker_jsonl` it streams the file line by line
and builds each record with the same `RecordBuilder` preprocessing uses (so `on_bad_record`, the
marker rules, path safety, budgets and `sequence_len` give the same verdicts), except that media
are decoded, not only probed: each image fully (and converted to RGB, as the collator does) and
the first frame of each video, once per file. A truncated image therefore fails here, although
its intact header passes preprocessing.

The report (stdout) gives records ok / bad by reason, the token-length distribution, the records
that would be dropped as too long, the media decode time, and each bad record as
`FILE:LINE: reason: detail (marker M, path P)`. A progress bar goes to stderr.

Exit status: 0 when training would run on the data as it is (too-long records are dropped under
the default `excess_length_strategy: drop`, as in training, so they only warn; bad records under
`on_bad_record: skip` are reported but do not fail); 1 when preprocessing would stop (bad records
under `on_bad_record: error`, too-long records under `excess_length_strategy: raise`) or no usable
record is left; 2 for usage and configuration errors, printed as one line.

Only the tokenizer and processor are loaded, never model weights, so it runs on CPU. Memory stays
bounded however long the file is: only counters, length histograms (one counter per distinct
length), the first `--max-listed` problems and one cache entry per distinct media file are kept.

Converting data (details in `convert.py`)
-----------------------------------------

    axolotl-qwenvl convert IN OUT.jsonl [--from auto|llava|sharegpt|openai] [--media-root DIR]
                                        [--check-media] [--on-bad-record error|skip]
    axolotl-qwenvl export IN.jsonl OUT --to sharegpt|openai [--on-bad-record error|skip]

`convert` turns LLaVA, LLaMA-Factory sharegpt and OpenAI-style chat records (`.jsonl`, or a `.json`
array) into marker JSONL: `<image>` / `<video>` placeholders and content parts become
`<image_no_N>` / `<video_no_N>`, and every output record is parsed again with the plugin's own
record and marker rules. `export` writes marker `messages` records back as sharegpt or OpenAI-style
records. Both list every bad record as `FILE:LINE: reason: detail` on stderr and print a one-line
summary on stdout; exit status 0 when OUT is written, 1 when bad records under
`--on-bad-record error` (the default; nothing is written) or no record is left, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import MediaError, Reason
from .media import ImageInfo, VideoInfo, load_image, probe_video
from .records import RecordBuilder, parse_line

STRATEGY = "axolotl_qwenvl_plugin.marker_jsonl"
PLUGIN = "axolotl_qwenvl_plugin.QwenVLPlugin"
DEFAULT_MAX_LISTED = 1000
DEFAULT_SEQUENCE_LEN = 512  # Axolotl's default

PROG = "axolotl-qwenvl"


class UsageError(Exception):
    """A problem with the command line or the config: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on usage errors; return instead
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "check":
            return run_check(Path(args.config), max_listed=args.max_listed, progress=None if args.progress else False)
        return _run_conversion(args)
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def _run_conversion(args: argparse.Namespace) -> int:
    from . import convert  # imported on use: it imports this module for UsageError

    progress = None if args.progress else False
    if args.command == "convert":
        return convert.convert_file(
            args.input, args.output, fmt=args.source_format, media_root=args.media_root,
            check_media=args.check_media, on_bad_record=args.on_bad_record, max_listed=args.max_listed,
            progress=progress,
        )  # fmt: skip
    return convert.export_file(
        args.input, args.output, to=args.to, on_bad_record=args.on_bad_record, max_listed=args.max_listed,
        progress=progress,
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Tools for axolotl-qwenvl-plugin.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check every record and media file of a config's marker datasets (CPU, no model weights)",
        description="Parse every record, resolve every marker, decode every media file and count exact "
        "token lengths, without loading model weights. Exit status: 0 clean, 1 bad records under "
        "`qwenvl.on_bad_record: error`, 2 usage or config error.",
    )
    check.add_argument("config", metavar="CONFIG.yml", help="the Axolotl config used for training")
    check.add_argument(
        "--max-listed",
        type=int,
        default=DEFAULT_MAX_LISTED,
        metavar="N",
        help=f"list at most N bad and N too-long records per dataset (all are counted; default {DEFAULT_MAX_LISTED})",
    )
    check.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (by default shown on a terminal)"
    )

    convert = commands.add_parser(
        "convert",
        help="convert LLaVA, LLaMA-Factory sharegpt or OpenAI-style chat data to marker JSONL",
        description="Convert LLaVA, LLaMA-Factory sharegpt or OpenAI-style chat records (JSONL, or a .json array) "
        "to marker JSONL. Every bad record is listed as FILE:LINE: reason: detail. Exit status: 0 written, "
        "1 bad records under --on-bad-record error (nothing written) or none left, 2 usage error.",
    )
    convert.add_argument("input", metavar="IN", help="input records: .jsonl, or a .json array")
    convert.add_argument("output", metavar="OUT.jsonl", help="marker JSONL to write (replaced only when the run succeeds)")
    convert.add_argument(
        "--from",
        dest="source_format",
        choices=("auto", "llava", "sharegpt", "openai"),
        default="auto",
        help="input format (default auto: detected per record)",
    )
    convert.add_argument(
        "--media-root",
        metavar="DIR",
        help="the input's relative media paths are relative to DIR: rewrite them relative to OUT's folder "
        "(default: keep paths as written)",
    )
    convert.add_argument(
        "--check-media", action="store_true", help="also check that every media file exists (a missing one is a bad record)"
    )
    _add_common_options(convert)

    export = commands.add_parser(
        "export",
        help="write marker JSONL `messages` records as LLaMA-Factory sharegpt or OpenAI-style records",
        description="Write the `messages` records of a marker JSONL file as sharegpt records (<image>/<video> "
        "placeholders) or OpenAI-style content lists. OUT ending in .json is a JSON array, else JSONL. "
        "Exit status: 0 written, 1 bad records under --on-bad-record error (nothing written), 2 usage error.",
    )
    export.add_argument("input", metavar="IN.jsonl", help="marker JSONL")
    export.add_argument("output", metavar="OUT", help="file to write: .json (array) or .jsonl")
    export.add_argument("--to", required=True, choices=("sharegpt", "openai"), help="output format")
    _add_common_options(export)
    return parser


def _add_common_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--on-bad-record",
        choices=("error", "skip"),
        default="error",
        help="error (default): list every bad record and write nothing; skip: write the good records, list the bad",
    )
    command.add_argument(
        "--max-listed",
        type=int,
        default=DEFAULT_MAX_LISTED,
        metavar="N",
        help=f"list at most N bad records (all are counted; default {DEFAULT_MAX_LISTED})",
    )
    command.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (by default shown on a terminal)"
    )


# ------------------------------------------------------------------------------------------ config


@dataclass
class CheckSetup:
    """What `check` needs from the config, read the way Axolotl and the plugin read it."""

    cfg: object  # axolotl DictDefault, after the plugin's register() adjustments
    config_path: Path
    tokenizer: object
    processor: object
    datasets: list[tuple[str, dict]] = field(default_factory=list)  # (display name, ds_cfg) to check
    notes: list[str] = field(default_factory=list)


def load_config(config_path: Path):
    """The YAML as an Axolotl `DictDefault`, with the plugin's required keys applied and `qwenvl:` validated."""
    import yaml

    if config_path.is_dir():
        raise UsageError(f"{config_path} is a folder; pass the config file, e.g. {config_path / 'qwenvl.yml'}")
    if not config_path.is_file():
        raise UsageError(f"config file not found: {config_path}")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config_path} is not valid YAML: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{config_path} must be a YAML mapping of Axolotl keys, got {type(raw).__name__}")

    plugins = raw.get("plugins") or []
    if PLUGIN not in plugins:
        raise UsageError(
            f"`plugins` does not list {PLUGIN}; without it Axolotl drops the `qwenvl:` block and the marker "
            f"datasets lose their collator: add `plugins: [{PLUGIN}]`"
        )
    _validate_qwenvl_block(raw)

    # Axolotl is imported only now: a mistyped path above fails fast, without ~20 s of imports.
    from axolotl.utils.dict import DictDefault

    from .plugin import QwenVLConfigError, apply_required_axolotl_keys, resolve_config_relative_paths

    # As Axolotl's load_cfg records it before the plugin's register(): relative input paths and
    # media_dir are read against this file's folder.
    raw["axolotl_config_path"] = str(config_path.resolve())
    try:
        # Exactly what QwenVLPlugin.register() does before training, in the same order: relative
        # dataset / model / tokenizer paths are looked up next to the config first, then from the
        # current directory, as `axolotl train` resolves them, so check reads the same files.
        resolve_config_relative_paths(raw, argv=["axolotl", "train"])
        apply_required_axolotl_keys(raw)
    except QwenVLConfigError as exc:
        raise UsageError(str(exc)) from None
    cfg = DictDefault(raw)

    if not cfg.base_model:
        raise UsageError(f"{config_path} has no `base_model`; it names the Qwen2.5-VL checkpoint (tokenizer and processor)")
    try:
        cfg.sequence_len = DEFAULT_SEQUENCE_LEN if cfg.sequence_len is None else int(cfg.sequence_len)
    except (TypeError, ValueError):
        raise UsageError(f"`sequence_len` must be an integer, got {cfg.sequence_len!r}") from None
    if cfg.sequence_len <= 0:
        raise UsageError(f"`sequence_len` must be positive, got {cfg.sequence_len}")
    strategy = str(cfg.excess_length_strategy or "drop").lower()
    if strategy not in ("drop", "raise"):
        raise UsageError(f"`excess_length_strategy` must be drop or raise, got {cfg.excess_length_strategy!r}")
    return cfg


def _validate_qwenvl_block(raw: dict) -> None:
    """Validate `qwenvl:` with the plugin's own model; the message names each bad key."""
    from pydantic import ValidationError

    from .args import QwenVLArgs

    try:
        QwenVLArgs.model_validate({"qwenvl": raw.get("qwenvl")} if "qwenvl" in raw else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if len(error["loc"]) > 1:  # a single key: show what was given
                message += f" (got {error.get('input')!r:.60})"
            problems.append(f"{key}: {message}")
        raise UsageError("invalid qwenvl settings: " + "; ".join(problems)) from None


def load_tokenizer_and_processor(cfg):
    """Tokenizer and processor as Axolotl prepares them for this plugin (no model weights)."""
    from .settings import load_processor, processor_source

    try:
        processor = load_processor(cfg)
    except Exception as exc:  # OSError / ValueError from from_pretrained: a wrong path or name
        raise UsageError(f"cannot load the processor from {processor_source(cfg)!r}: {_one_line(exc)}") from None
    tokenizer = processor.tokenizer
    if cfg.tokenizer_config and str(cfg.tokenizer_config) != processor_source(cfg):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(cfg.tokenizer_config), trust_remote_code=bool(cfg.trust_remote_code)
            )
        except Exception as exc:
            raise UsageError(f"cannot load the tokenizer from {cfg.tokenizer_config!r}: {_one_line(exc)}") from None
        processor.tokenizer = tokenizer
    if cfg.chat_template:  # Axolotl's load_tokenizer installs the configured template the same way
        from axolotl.utils.chat_templates import get_chat_template_from_config

        try:
            tokenizer.chat_template = get_chat_template_from_config(cfg=cfg, tokenizer=tokenizer)
        except ValueError as exc:
            raise UsageError(f"chat_template: {_one_line(exc)}") from None
    return tokenizer, processor


def find_marker_datasets(cfg, config_path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The marker datasets to check as (path to show, ds_cfg with a usable path), and notes on the rest.

    Their paths are already resolved as training resolves them (`load_config`), so each one is used
    as it stands: absolute when found next to the config file, as written when only the current
    directory has it.
    """
    found: list[tuple[str, dict]] = []
    notes: list[str] = []
    for key in ("datasets", "test_datasets"):
        for index, ds in enumerate(cfg.get(key) or []):
            if not hasattr(ds, "get") or ds.get("type") != STRATEGY:
                kind = ds.get("type") if hasattr(ds, "get") else type(ds).__name__
                notes.append(f"{key}[{index}] (type {kind}) is not a marker dataset: not checked")
                continue
            path = local_data_path(str(ds.get("path") or ""), config_path, f"{key}[{index}]")
            if path.is_dir() or path.suffix != ".jsonl":
                notes.append(f"{key}[{index}]: {path} is not a .jsonl file; check reads marker .jsonl files only: not checked")
                continue
            found.append((str(path), {**dict(ds), "path": str(path), "ds_type": "text"}))
    if not found:
        raise UsageError(f"no dataset with `type: {STRATEGY}` and a .jsonl path in the config")
    return found, notes


def local_data_path(path_text: str, config_path: Path, name: str) -> Path:
    """A marker dataset's path after `resolve_config_relative_paths`: it must name a local file or folder.

    A path that can only be local and is missing was refused there already; what is left missing
    here could be a Hub dataset id, which check cannot read.
    """
    if not path_text:
        raise UsageError(f"{name} has no `path`")
    path = Path(path_text).expanduser()
    if path.exists():
        return path
    raise UsageError(
        f"{name}.path: dataset file {path_text!r} not found, neither next to the config file "
        f"({config_path.resolve().parent}) nor from the current directory ({Path.cwd()}); "
        "check reads local marker .jsonl files only"
    )


# ------------------------------------------------------------------------------------------- media


class MediaDecodeCache:
    """Decodes each media file once, remembering what happened (size, or the error) per path."""

    def __init__(self):
        self._verdicts: dict[tuple[str, str], ImageInfo | VideoInfo | MediaError] = {}
        self.seconds = 0.0
        self.decoded: Counter = Counter()  # kind -> distinct files decoded
        self.failed: Counter = Counter()  # kind -> distinct files that failed

    def probe(self, kind: str, path: str) -> ImageInfo | VideoInfo:
        key = (kind, path)
        verdict = self._verdicts.get(key)
        if verdict is None:
            started = time.perf_counter()
            try:
                verdict = _decode(kind, Path(path))
            except MediaError as err:
                verdict = err
                self.failed[kind] += 1
            self.seconds += time.perf_counter() - started
            self.decoded[kind] += 1
            self._verdicts[key] = verdict
        if isinstance(verdict, MediaError):
            # A fresh error each time: the caller attaches this record's marker and FILE:LINE to it.
            raise MediaError(verdict.reason, verdict.detail, path=verdict.path)
        return verdict


def _decode(kind: str, path: Path) -> ImageInfo | VideoInfo:
    if kind == "image":
        # load_image is what the collator runs: full decode plus the RGB conversion (16-bit, CMYK,
        # palette, alpha), so a file that passes here also loads at training time.
        with load_image(path) as image:
            return ImageInfo(width=image.width, height=image.height)
    return probe_video(path, decode_first_frame=True)


@dataclass
class DecodingRecordBuilder(RecordBuilder):
    """Preprocessing's RecordBuilder, except that its media probe decodes (through a shared cache)."""

    media: MediaDecodeCache | None = None

    @classmethod
    def like(cls, base: RecordBuilder, media: MediaDecodeCache) -> "DecodingRecordBuilder":
        public = {name: getattr(base, name) for name in base.__dataclass_fields__ if not name.startswith("_")}
        return cls(**public, media=media)

    def _probe(self, ref):
        return self.media.probe(ref.kind, ref.path)


# ------------------------------------------------------------------------------------------ checking


@dataclass
class LengthHistogram:
    """Exact percentiles in memory bounded by the range of lengths, not by the number of records."""

    counts: Counter = field(default_factory=Counter)
    total: int = 0

    def add(self, value: int) -> None:
        self.counts[value] += 1
        self.total += 1

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile (q in 0..100); 0 when empty."""
        if not self.total:
            return 0
        rank = max(1, math.ceil(self.total * q / 100))
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:
                return value
        return max(self.counts)

    def max(self) -> int:
        return max(self.counts) if self.counts else 0


@dataclass
class DatasetReport:
    data_file: str
    media_dir: str
    records: int = 0
    ok: int = 0
    bad: Counter = field(default_factory=Counter)  # reason -> count (too_long not included)
    too_long: int = 0
    listed_bad: list[str] = field(default_factory=list)
    listed_too_long: list[str] = field(default_factory=list)
    text_tokens: LengthHistogram = field(default_factory=LengthHistogram)
    vision_tokens: LengthHistogram = field(default_factory=LengthHistogram)
    total_tokens: LengthHistogram = field(default_factory=LengthHistogram)

    @property
    def bad_count(self) -> int:
        return sum(self.bad.values())


def check_dataset(
    name: str, ds_cfg: dict, setup: CheckSetup, media: MediaDecodeCache, *, max_listed: int, progress
) -> DatasetReport:
    from tqdm import tqdm

    from . import marker_jsonl  # imports Axolotl: only once a config has been read

    # The strategy Axolotl would build for this dataset: same settings, media_dir and sequence_len.
    try:
        strategy = marker_jsonl.load(setup.tokenizer, setup.cfg, ds_cfg=ds_cfg, processor=setup.processor)
    except ValueError as exc:  # e.g. a tokenizer without Qwen's vision tokens
        raise UsageError(f"{name}: {_one_line(exc)}") from None
    builder = DecodingRecordBuilder.like(strategy.builder, media)
    # Measures records that are too long (their length is reported, not just the verdict).
    unbounded = replace(builder, sequence_len=sys.maxsize)

    report = DatasetReport(data_file=name, media_dir=str(builder.media_dir))
    with open(ds_cfg["path"], "rb") as raw:
        line_count = sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b""))
    # Text mode with universal newlines, split on "\n": exactly how `datasets`' text loader numbers rows.
    with open(ds_cfg["path"], encoding="utf-8", errors="surrogateescape") as lines, tqdm(
        total=line_count, desc=f"checking {Path(name).name}", unit=" records", file=sys.stderr,
        disable=None if progress is None else not progress, mininterval=0.5, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        for number, line in enumerate(lines, start=1):
            line = line.removesuffix("\n")
            location = f"{name}:{number}"
            report.records += 1
            bar.update(1)
            if _has_undecodable_bytes(line):
                _count_bad(report, Reason.INVALID_JSON.value, f"{location}: {Reason.INVALID_JSON.value}: "
                           "line is not valid UTF-8 (Axolotl's loader refuses the whole file); re-save it as UTF-8",
                           max_listed)  # fmt: skip
                continue
            try:
                row = builder.build_line(line, location)
            except ValueError as exc:  # not a data error: e.g. a chat template that cannot be split into turns
                raise UsageError(f"{location}: {_one_line(exc)}") from None
            if not row["qwenvl_error"]:
                report.ok += 1
                _add_lengths(report, row)
                continue
            error = json.loads(row["qwenvl_error"])
            if error["reason"] == Reason.TOO_LONG.value:
                report.too_long += 1
                if len(report.listed_too_long) < max_listed:
                    report.listed_too_long.append(error["message"])
                _add_lengths(report, unbounded.build(parse_line(line)))
            else:
                _count_bad(report, error["reason"], error["message"], max_listed)
    return report


# errors="surrogateescape" turns each invalid UTF-8 byte into a lone surrogate U+DC80..U+DCFF.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _has_undecodable_bytes(line: str) -> bool:
    return not line.isascii() and _ESCAPED_BYTE.search(line) is not None


def _count_bad(report: DatasetReport, reason: str, message: str, max_listed: int) -> None:
    report.bad[reason] += 1
    if len(report.listed_bad) < max_listed:
        report.listed_bad.append(message)


def _add_lengths(report: DatasetReport, row: dict) -> None:
    total = len(row["input_ids"])
    vision = sum(plan["num_pads"] + 2 for plan in json.loads(row["qwenvl_media"]))  # pads + start/end
    report.text_tokens.add(total - vision)
    report.vision_tokens.add(vision)
    report.total_tokens.add(total)


def run_check(config_path: Path, *, max_listed: int = DEFAULT_MAX_LISTED, progress: bool | None = None) -> int:
    """Check every marker dataset of the config, print the report, return the exit status.

    `progress`: True / False shows / hides the bar; None shows it only on a terminal.
    """
    if max_listed < 0:
        raise UsageError("--max-listed must be >= 0")
    cfg = load_config(config_path)
    _quiet_native_video_logs()
    tokenizer, processor = load_tokenizer_and_processor(cfg)
    setup = CheckSetup(cfg, config_path, tokenizer, processor)
    setup.datasets, setup.notes = find_marker_datasets(cfg, config_path)

    media = MediaDecodeCache()
    reports = [
        check_dataset(name, ds_cfg, setup, media, max_listed=max_listed, progress=progress)
        for name, ds_cfg in setup.datasets
    ]
    verdict, status = _verdict(reports, setup)
    print(format_report(setup, reports, media, verdict))
    return status


def _verdict(reports: list[DatasetReport], setup: CheckSetup) -> tuple[str, int]:
    from .settings import qwenvl_settings

    policy = qwenvl_settings(setup.cfg).on_bad_record
    excess = str(setup.cfg.excess_length_strategy or "drop").lower()
    bad = sum(r.bad_count for r in reports)
    too_long = sum(r.too_long for r in reports)
    usable = sum(r.ok for r in reports)
    if bad and policy == "error":
        return f"FAILED: {bad} bad record(s) would stop the run under `qwenvl.on_bad_record: error`", 1
    if too_long and excess == "raise":
        return f"FAILED: {too_long} record(s) exceed sequence_len under `excess_length_strategy: raise`", 1
    if not usable:
        return "FAILED: no usable record is left to train on", 1
    warnings = []
    if bad:
        warnings.append(f"{bad} bad record(s) will be skipped (`qwenvl.on_bad_record: skip`)")
    if too_long:
        warnings.append(f"{too_long} too-long record(s) will be dropped")
    return ("OK, with warnings: " + "; ".join(warnings)) if warnings else "OK", 0


# ------------------------------------------------------------------------------------------ report


def format_report(setup: CheckSetup, reports: list[DatasetReport], media: MediaDecodeCache, verdict: str) -> str:
    from .settings import processor_source, qwenvl_settings

    cfg = setup.cfg
    settings = qwenvl_settings(cfg)
    excess = str(cfg.excess_length_strategy or "drop").lower()
    out = [
        f"axolotl-qwenvl check {setup.config_path}",
        f"  processor: {processor_source(cfg)} (tokenizer and processor only, no model weights)",
        f"  sequence_len {cfg.sequence_len}, on_bad_record: {settings.on_bad_record}, "
        f"excess_length_strategy: {excess}, train_on_inputs: {bool(cfg.train_on_inputs)}",
    ]
    out += [f"  note: {note}" for note in setup.notes]
    for report in reports:
        out += ["", *_dataset_section(report, cfg.sequence_len, excess)]
    images, videos = media.decoded["image"], media.decoded["video"]
    out += [
        "",
        f"media: {images} image(s) and {videos} video(s) decoded in {media.seconds:.2f} s "
        f"({media.failed['image'] + media.failed['video']} unusable)",
    ]
    if len(reports) > 1:
        total = sum(r.records for r in reports)
        ok = sum(r.ok for r in reports)
        bad = sum(r.bad_count for r in reports)
        too_long = sum(r.too_long for r in reports)
        out.append(f"all datasets: {total} records: {ok} ok, {bad} bad, {too_long} too long")
    out.append(f"result: {verdict}")
    return "\n".join(out)


def _dataset_section(report: DatasetReport, sequence_len: int, excess: str) -> list[str]:
    out = [
        f"dataset {report.data_file} (media_dir {report.media_dir})",
        f"  records: {report.records} total, {report.ok} ok, {report.bad_count} bad, {report.too_long} too long",
    ]
    if report.bad:
        out.append("  bad by reason:")
        width = max(len(reason) for reason in report.bad)
        out += [f"    {reason:<{width}}  {count}" for reason, count in sorted(report.bad.items(), key=lambda kv: (-kv[1], kv[0]))]
    measured = report.total_tokens.total
    if measured:
        out.append(f"  tokens per record ({measured} measured: ok + too long)      p50      p95      max")
        for label, histogram in (
            ("text", report.text_tokens),
            ("vision", report.vision_tokens),
            ("total", report.total_tokens),
        ):
            p50, p95, top = histogram.percentile(50), histogram.percentile(95), histogram.max()
            out.append(f"    {label:<48}{p50:>8} {p95:>8} {top:>8}")
        top = report.total_tokens.max()
        out.append(f"    sequence_len {sequence_len}: longest record uses {100 * top / sequence_len:.0f}% of it")
    if report.too_long:
        action = "dropped" if excess == "drop" else "refused (excess_length_strategy: raise)"
        out.append(f"  too long for sequence_len {sequence_len}, would be {action}: {report.too_long}")
        out += [f"    {message}" for message in report.listed_too_long]
        out += _more(report.too_long, len(report.listed_too_long))
    if report.bad:
        out.append(f"  bad records: {report.bad_count}")
        out += [f"    {message}" for message in report.listed_bad]
        out += _more(report.bad_count, len(report.listed_bad))
    return out


def _more(count: int, listed: int) -> list[str]:
    return [f"    ... and {count - listed} more (raise --max-listed to list them)"] if count > listed else []


# ------------------------------------------------------------------------------------------ helpers


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quiet_native_video_logs() -> None:
    """decord's bundled FFmpeg prints its own errors to stderr; check reports every failure itself."""
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except Exception:  # decord missing or without logging control: PyAV is used, nothing to quiet
        pass


if __name__ == "__main__":
    sys.exit(main())

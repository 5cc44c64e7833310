"""Dataset strategy `type: axolotl_qwenvl_plugin.marker_jsonl`.

Axolotl calls `load(tokenizer, cfg, ds_cfg, processor)` and then `wrap_dataset` on the loaded
rows. The plugin's `register()` makes `.jsonl` files load as plain text lines, so row i is line
i + 1 of the file: invalid JSON and empty lines become per-line errors instead of a loader crash,
and every message names FILE:LINE. Bad records stop preprocessing with one message listing them
all (`on_bad_record: error`), or are dropped and counted (`skip`), before any training starts.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from axolotl.prompt_tokenizers import DatasetWrappingStrategy
from axolotl.utils.logging import get_logger

from .args import QwenVLConfig
from .errors import Reason
from .records import RecordBuilder
from .reporting import SkipLog
from .settings import load_processor, media_dir_for, qwenvl_settings

LOG = get_logger(__name__)

# How many bad records one error message lists before summarising the rest.
MAX_LISTED_ERRORS = 20


class BadRecordsError(ValueError):
    """Preprocessing found bad records under `on_bad_record: error`."""


class MarkerJsonlStrategy(DatasetWrappingStrategy):
    def __init__(
        self,
        builder: RecordBuilder,
        data_file: str,
        raw_lines: bool,
        excess_length: str,
        skip_log: SkipLog | None = None,
    ):
        self.builder = builder
        self.data_file = data_file
        self.raw_lines = raw_lines
        self.excess_length = excess_length
        self.skip_log = skip_log

    def wrap_dataset(self, dataset, process_count: int | None = None, keep_in_memory: bool | None = False, **kwargs):
        prepared = dataset.map(
            self._prepare_row,
            with_indices=True,
            remove_columns=list(dataset.column_names),
            num_proc=process_count if process_count and process_count > 1 and len(dataset) > 1 else None,
            keep_in_memory=bool(keep_in_memory),
            desc=f"qwenvl: preparing {Path(self.data_file).name}",
        )
        errors = [json.loads(e) for e in prepared["qwenvl_error"] if e]
        self._report(errors, total=len(prepared))
        if errors:
            prepared = prepared.filter(lambda e: not e, input_columns="qwenvl_error", desc="qwenvl: dropping bad records")
        return prepared.remove_columns("qwenvl_error")

    def _prepare_row(self, row: dict, index: int) -> dict:
        if self.raw_lines:
            return self.builder.build_line(row["text"], f"{self.data_file}:{index + 1}")
        # Rows that Axolotl already parsed (parquet, hub, JSON arrays): no line numbers exist, and
        # Arrow fills keys a record lacks with None (a `messages` row gets `text: None`): drop them.
        record = {key: value for key, value in row.items() if value is not None}
        return self.builder.build_line(json.dumps(record), f"{self.data_file}[row {index}]")

    def _report(self, errors: list[dict], total: int) -> None:
        too_long = [e for e in errors if e["reason"] == Reason.TOO_LONG.value]
        bad = [e for e in errors if e["reason"] != Reason.TOO_LONG.value]
        policy = self.builder.settings.on_bad_record
        if too_long:
            # Over-long records follow Axolotl's own excess_length_strategy (drop by default);
            # truncation is refused at config time because it would cut through vision spans.
            if self.excess_length == "raise":
                raise BadRecordsError(_listing(too_long, "record(s) exceed sequence_len (excess_length_strategy: raise)"))
            LOG.warning(_listing(too_long, f"of {total} record(s) are longer than sequence_len and were dropped"))
        if self.skip_log is not None and policy == "skip":
            self.skip_log.replace_stage("preprocess", self.data_file, bad)
        if not bad:
            return
        if policy == "error":
            raise BadRecordsError(
                _listing(bad, f"bad record(s) of {total} found")
                + "\nFix them, or set `qwenvl.on_bad_record: skip` to train on the rest."
            )
        counts = Counter(e["reason"] for e in bad)
        LOG.warning(
            _listing(bad, f"of {total} record(s) skipped (qwenvl.on_bad_record: skip)")
            + "\nby reason: "
            + ", ".join(f"{reason}={count}" for reason, count in counts.most_common())
        )


def _listing(errors: list[dict], headline: str) -> str:
    lines = [f"qwenvl: {len(errors)} {headline}:"]
    lines += [f"  {e['message']}" for e in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more (run `axolotl-qwenvl check CONFIG` for all)")
    return "\n".join(lines)


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> MarkerJsonlStrategy:
    """Axolotl's entry point for `type: axolotl_qwenvl_plugin.marker_jsonl`."""
    settings: QwenVLConfig = qwenvl_settings(cfg)
    ds_cfg = ds_cfg or {}
    data_file = str(ds_cfg.get("path") or "")
    builder = RecordBuilder(
        tokenizer=tokenizer,
        processor=processor if processor is not None else load_processor(cfg, tokenizer),
        settings=settings,
        media_dir=media_dir_for(cfg, settings, data_file),
        sequence_len=int(cfg.sequence_len),
        train_on_inputs=bool(cfg.train_on_inputs),
    )
    return MarkerJsonlStrategy(
        builder,
        data_file=data_file,
        raw_lines=ds_cfg.get("ds_type") == "text",
        excess_length=(cfg.excess_length_strategy or "drop").lower(),
        skip_log=SkipLog(cfg.output_dir) if cfg.get("output_dir") else None,
    )

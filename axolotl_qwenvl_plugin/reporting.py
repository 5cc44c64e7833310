"""Where skipped records are written down, so the end of a run can say how many and why.

Preprocessing and the collator (inside DataLoader worker processes) append one JSON line per
skipped record to `OUTPUT_DIR/qwenvl_skipped.jsonl`; `axolotl preprocess` and `axolotl train`
share it because they share the config's output_dir. The plugin summarises it after training.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

SKIP_LOG_NAME = "qwenvl_skipped.jsonl"


class SkipLog:
    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / SKIP_LOG_NAME

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def replace_stage(self, stage: str, data_file: str, errors: list[dict]) -> None:
        """Rewrite one stage's entries for one data file (a rerun replaces, never duplicates)."""
        kept = [e for e in self.entries() if not (e["stage"] == stage and e.get("data_file") == data_file)]
        added = [{**e, "stage": stage, "data_file": data_file} for e in errors]
        self._write(kept + added)

    def clear_stage(self, stage: str) -> None:
        self._write([e for e in self.entries() if e["stage"] != stage])

    def append(self, stage: str, error: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One short line per write: appends from several worker processes do not interleave.
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps({**error, "stage": stage}) + "\n")

    def summary(self) -> str | None:
        entries = self.entries()
        if not entries:
            return None
        by_stage = Counter(e["stage"] for e in entries)
        by_reason = Counter(e["reason"] for e in entries)
        return (
            f"qwenvl: {len(entries)} record(s) skipped under on_bad_record: skip "
            f"({', '.join(f'{stage}: {n}' for stage, n in sorted(by_stage.items()))}); by reason: "
            + ", ".join(f"{reason}={n}" for reason, n in by_reason.most_common())
            + f"; the list is in {self.path}"
        )

    def _write(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One temporary file per process: DDP ranks may rewrite the log at the same moment.
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
        tmp.replace(self.path)

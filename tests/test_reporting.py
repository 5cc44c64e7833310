"""Skipped-record bookkeeping across stages, and data errors shown without a traceback."""

from __future__ import annotations

import subprocess
import sys

from axolotl_qwenvl_plugin.errors import MediaError, Reason, clean_data_error_message
from axolotl_qwenvl_plugin.reporting import SkipLog


def test_skip_log_replaces_a_stage_per_file_and_summarises(tmp_path):
    log = SkipLog(tmp_path)
    assert log.summary() is None
    log.replace_stage("preprocess", "a.jsonl", [{"reason": "missing_file", "message": "a.jsonl:2: ...", "location": "a.jsonl:2"}])
    log.replace_stage("preprocess", "b.jsonl", [{"reason": "invalid_json", "message": "b.jsonl:1: ...", "location": "b.jsonl:1"}])
    # Preprocessing a.jsonl again replaces its entries instead of adding duplicates.
    log.replace_stage("preprocess", "a.jsonl", [{"reason": "missing_file", "message": "a.jsonl:2: ...", "location": "a.jsonl:2"}])
    log.append("train", {"reason": "truncated_image", "message": "a.jsonl:5: ...", "location": "a.jsonl:5"})
    assert [e["location"] for e in log.entries()] == ["b.jsonl:1", "a.jsonl:2", "a.jsonl:5"]
    summary = log.summary()
    assert summary.startswith("qwenvl: 3 record(s) skipped under on_bad_record: skip (preprocess: 2, train: 1)")
    assert "missing_file=1" in summary and "invalid_json=1" in summary and "truncated_image=1" in summary
    log.clear_stage("train")
    assert [e["stage"] for e in log.entries()] == ["preprocess", "preprocess"]


def test_worker_wrapped_error_is_unwrapped():
    error = MediaError(Reason.MISSING_FILE, "file does not exist", path="cats/1.jpg", location="data.jsonl:3")
    assert clean_data_error_message(error) == "data.jsonl:3: missing_file: file does not exist (path cats/1.jpg)"
    wrapped = RuntimeError(
        "Caught MediaError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "collator.py", line 1, in _encode_media\n'
        f"axolotl_qwenvl_plugin.errors.MediaError: {error}\n"
    )
    assert clean_data_error_message(wrapped) == str(error)
    assert clean_data_error_message(ValueError("unrelated")) is None


def test_uncaught_data_error_prints_one_message_not_a_traceback():
    code = (
        "from axolotl_qwenvl_plugin.errors import MediaError, Reason, install_clean_exit_for_data_errors\n"
        "install_clean_exit_for_data_errors()\n"
        "raise MediaError(Reason.MISSING_FILE, 'file does not exist', path='a.jpg', location='d.jsonl:3')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "d.jsonl:3: missing_file: file does not exist (path a.jpg)" in proc.stderr
    assert "qwenvl.on_bad_record: skip" in proc.stderr


def test_concurrent_rewrites_from_several_processes_never_fail(tmp_path):
    """DDP ranks rewrite the log at the same moment (clear_stage at trainer creation): each uses
    its own temporary file, so no rank's rename finds the file gone."""
    import multiprocessing

    log = SkipLog(tmp_path)
    log.append("train", {"reason": "missing_file", "where": "a.jsonl:1"})
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_clear_many, [str(tmp_path)] * 4)
    assert log.entries() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwenvl_skipped.jsonl"]


def _clear_many(output_dir: str) -> None:
    for _ in range(200):
        SkipLog(output_dir).clear_stage("train")

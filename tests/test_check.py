"""`axolotl-qwenvl check CONFIG.yml` on the bad corpus, on clean data, on bad configs and on 20k+ records.

Most tests call `cli.main([...])` in-process (the tiny processor loads in about a second); two run
the installed console script in a subprocess, which costs ~30 s of imports each on this machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import yaml
from bad_corpus import SEQUENCE_LEN, build_bad_corpus, marker_dataset, write_config
from media_factory import write_image

from axolotl_qwenvl_plugin import cli

CONSOLE_SCRIPT = Path(sys.executable).parent / "axolotl-qwenvl"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_bad_corpus(tmp_path_factory.mktemp("check") / "corpus")


def corpus_config(corpus, model_dir, name="cfg.yml", **overrides) -> Path:
    return write_config(corpus.root / name, model_dir, [marker_dataset(corpus.data_file)], **overrides)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(["check", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def listed(out: str, data_file: Path) -> dict[int, str]:
    """{line: reason} for every `FILE:LINE: reason: ...` entry of the report (each must appear once)."""
    pattern = re.compile(rf"^\s+{re.escape(str(data_file))}:(\d+): ([a-z_]+): ", re.MULTILINE)
    found = [(int(line), reason) for line, reason in pattern.findall(out)]
    lines = [line for line, _ in found]
    assert len(lines) == len(set(lines)), f"a record is listed twice: {Counter(lines)}"
    return dict(found)


def entry(out: str, location: str) -> str:
    (match,) = [line.strip() for line in out.splitlines() if line.strip().startswith(f"{location}: ")]
    return match


def section_counts(out: str) -> dict[str, int]:
    """The `bad by reason:` block of a single-dataset report."""
    block = out.split("  bad by reason:\n", 1)[1]
    counts = {}
    for line in block.splitlines():
        match = re.fullmatch(r"    ([a-z_]+)\s+(\d+)", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


# ------------------------------------------------------------------------------- the bad corpus


def test_check_reports_every_bad_record_with_reason_and_location(corpus, tiny_model_dir, capsys):
    status, out, err = run_main(capsys, corpus_config(corpus, tiny_model_dir))
    assert status == 1
    # Exactly the expected lines are listed, each with its exact reason: no more, no fewer.
    assert listed(out, corpus.data_file) == corpus.expected
    total = len(corpus.good_lines) + len(corpus.expected)
    bad = len(corpus.bad_lines)
    assert f"records: {total} total, {len(corpus.good_lines)} ok, {bad} bad, 1 too long" in out
    assert section_counts(out) == dict(Counter(r for r in corpus.expected.values() if r != "too_long"))
    assert "result: FAILED: " in out and "on_bad_record: error" in out

    lines = corpus.data_file.read_text().split("\n")
    for number, reason in corpus.expected.items():
        message = entry(out, corpus.location(number))
        assert message.startswith(f"{corpus.location(number)}: {reason}: ")
        record = _json_or_none(lines[number - 1])
        media = (record or {}).get("images") or (record or {}).get("videos")
        if reason.endswith(("_file", "_image", "_video", "_stream", "_frames", "_large", "_media_dir")):
            # Media problems name the marker and the path exactly as the record wrote it.
            assert message.endswith(f"(marker <{'image' if 'images' in record else 'video'}_no_1>, path {media[0]})"), message


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def test_check_counts_converted_images_as_ok(corpus, tiny_model_dir, capsys):
    """16-bit, CMYK, palette and alpha images are converted to RGB (decoded here as the collator will)."""
    assert sorted(corpus.converted.values()) == ["CMYK", "I;16", "P", "RGBA"]
    status, out, _ = run_main(capsys, corpus_config(corpus, tiny_model_dir))
    for number in corpus.good_lines:
        assert f"{corpus.location(number)}:" not in out
    # The clean subset (good lines only) passes with exit 0.
    clean = corpus.root / "clean.jsonl"
    rows = corpus.data_file.read_text().split("\n")
    clean.write_text("\n".join(rows[n - 1] for n in sorted(corpus.good_lines)) + "\n")
    cfg = write_config(corpus.root / "clean.yml", tiny_model_dir, [marker_dataset(clean)])
    status, out, _ = run_main(capsys, cfg)
    assert status == 0
    assert f"records: {len(corpus.good_lines)} total, {len(corpus.good_lines)} ok, 0 bad, 0 too long" in out
    assert out.rstrip().endswith("result: OK")


def test_skip_policy_reports_but_exits_0(corpus, tiny_model_dir, capsys):
    cfg = corpus_config(corpus, tiny_model_dir, "skip.yml", qwenvl_overrides={"on_bad_record": "skip"})
    status, out, _ = run_main(capsys, cfg)
    assert status == 0
    assert "on_bad_record: skip" in out
    assert listed(out, corpus.data_file) == corpus.expected  # still every record, with its reason
    assert section_counts(out) == dict(Counter(r for r in corpus.expected.values() if r != "too_long"))
    assert f"result: OK, with warnings: {len(corpus.bad_lines)} bad record(s) will be skipped" in out


def test_installed_console_script(corpus, tiny_model_dir):
    """The `axolotl-qwenvl` entry point declared in pyproject.toml, run as a user runs it."""
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: reinstall the package (pip install -e .)"
    cfg = corpus_config(corpus, tiny_model_dir)
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "check", str(cfg)], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert listed(proc.stdout, corpus.data_file) == corpus.expected


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "5"}


# ------------------------------------------------------------------------------ lengths, policy


def test_length_distribution_and_too_long_policy(tmp_path, tiny_model_dir, tokenizer, capsys):
    write_image(tmp_path / "a.png", 56, 56)  # 4 pads + start/end = 6 vision tokens
    texts = ["one", "two words", "three words here", "word " * 200]
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"text": f"{t}<image_no_1>", "images": ["a.png"]}) + "\n" for t in texts)
    )
    text_counts = [len(tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for t in texts]
    totals = sorted(count + 6 for count in text_counts)
    assert totals[-1] > SEQUENCE_LEN > totals[-2]

    cfg = write_config(tmp_path / "cfg.yml", tiny_model_dir, [marker_dataset(tmp_path / "d.jsonl")])
    status, out, _ = run_main(capsys, cfg)
    assert status == 0, out  # too long under the default `drop`: a warning, as in training
    assert "records: 4 total, 3 ok, 0 bad, 1 too long" in out
    p50, p95, top = totals[1], totals[3], totals[3]  # nearest rank over the 4 measured records
    assert re.search(rf"\n    total\s+{p50}\s+{p95}\s+{top}\n", out), out
    assert re.search(r"\n    vision\s+6\s+6\s+6\n", out), out
    assert f"{tmp_path / 'd.jsonl'}:4: too_long: {totals[3]} tokens" in out
    assert "would be dropped: 1" in out and "result: OK, with warnings: 1 too-long record(s) will be dropped" in out

    cfg = write_config(tmp_path / "raise.yml", tiny_model_dir, [marker_dataset(tmp_path / "d.jsonl")],
                       excess_length_strategy="raise")  # fmt: skip
    status, out, _ = run_main(capsys, cfg)
    assert status == 1 and "excess_length_strategy: raise" in out


def test_chat_template_key_is_honoured(tmp_path, tiny_model_dir, tokenizer, capsys):
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    lengths = {}
    for template in ("qwen2_vl", "chatml"):
        from axolotl.utils.chat_templates import get_chat_template

        rendered = tokenizer.apply_chat_template(
            record["messages"], chat_template=get_chat_template(template), tokenize=False
        )
        expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        cfg = write_config(tmp_path / f"{template}.yml", tiny_model_dir, [marker_dataset(tmp_path / "d.jsonl")],
                           chat_template=template)  # fmt: skip
        status, out, _ = run_main(capsys, cfg)
        assert status == 0
        assert re.search(rf"\n    total\s+{expected}\s+{expected}\s+{expected}\n", out), out
        lengths[template] = expected
    assert lengths["qwen2_vl"] != lengths["chatml"]  # qwen2_vl adds a default system turn


def test_allow_outside_media_dir_lifts_only_the_path_rule(corpus, tiny_model_dir, capsys):
    cfg = corpus_config(corpus, tiny_model_dir, "outside.yml", qwenvl_overrides={"allow_outside_media_dir": True})
    _, out, _ = run_main(capsys, cfg)
    found = listed(out, corpus.data_file)
    path_lines = [n for n, reason in corpus.expected.items() if reason == "path_outside_media_dir"]
    assert "path_outside_media_dir" not in found.values()
    etc_passwd, absolute, symlink = path_lines
    assert found.get(etc_passwd) == "missing_file"  # <tmp>/etc/passwd does not exist
    assert absolute not in found and symlink not in found  # real images: now accepted


def test_invalid_utf8_line_is_reported_not_fatal(tmp_path, tiny_model_dir, capsys):
    write_image(tmp_path / "a.png", 56, 56)
    good = json.dumps({"text": "ok <image_no_1>", "images": ["a.png"]}).encode()
    (tmp_path / "d.jsonl").write_bytes(good + b"\n" + b'{"text": "caf\xe9"}\n' + good + b"\n")
    cfg = write_config(tmp_path / "cfg.yml", tiny_model_dir, [marker_dataset(tmp_path / "d.jsonl")])
    status, out, _ = run_main(capsys, cfg)
    assert status == 1
    assert listed(out, tmp_path / "d.jsonl") == {2: "invalid_json"}
    assert "line is not valid UTF-8" in out and "records: 3 total, 2 ok, 1 bad" in out


# ------------------------------------------------------------------------------ paths and usage


def test_relative_dataset_path_from_cwd_or_config_folder(corpus, tiny_model_dir, tmp_path, monkeypatch, capsys):
    cfg = write_config(corpus.root / "relative.yml", tiny_model_dir, [marker_dataset("data.jsonl")])
    monkeypatch.chdir(corpus.root)  # the config's folder is the current directory: the path as written
    status, out, _ = run_main(capsys, "relative.yml")
    assert status == 1 and "note:" not in out
    assert listed(out, Path("data.jsonl")) == corpus.expected

    monkeypatch.chdir(tmp_path)  # not found from here: found beside the config, as training finds it
    status, out, _ = run_main(capsys, cfg)
    assert status == 1 and "note:" not in out
    assert listed(out, (corpus.root / "data.jsonl").resolve()) == corpus.expected


GOOD_RECORD = {"text": "a cat <image_no_1>", "images": ["a.png"]}


def _two_data_files(tmp_path: Path, *, good_beside_config: bool) -> tuple[Path, Path, Path]:
    """a/cfg.yml naming `data.jsonl`, with a/data.jsonl and a different cwd/data.jsonl: one clean, one bad."""
    folder, cwd = tmp_path / "a", tmp_path / "cwd"
    good, bad = json.dumps(GOOD_RECORD) + "\n", json.dumps(GOOD_RECORD) + "\n" + '{"text": "unclosed\n'
    for place, clean in ((folder, good_beside_config), (cwd, not good_beside_config)):
        write_image(place / "a.png", 56, 56)
        (place / "data.jsonl").write_text(good if clean else bad)
    return folder / "cfg.yml", folder / "data.jsonl", cwd


@pytest.mark.parametrize("good_beside_config", [True, False], ids=["clean-beside-config", "bad-beside-config"])
def test_check_reads_the_data_file_training_reads(tiny_model_dir, tmp_path, monkeypatch, capsys, good_beside_config):
    """Both the config's folder and the cwd have `data.jsonl`: check reads the config folder's, as
    `axolotl train` does (plugin.resolve_config_relative_paths), whichever of the two is bad."""
    cfg_path, beside, cwd = _two_data_files(tmp_path, good_beside_config=good_beside_config)
    cfg = write_config(cfg_path, tiny_model_dir, [marker_dataset("data.jsonl")])
    monkeypatch.chdir(cwd)
    status, out, _ = run_main(capsys, cfg)
    assert f"dataset {beside.resolve()} (media_dir " in out
    if good_beside_config:
        assert status == 0 and "records: 1 total, 1 ok, 0 bad" in out and out.rstrip().endswith("result: OK"), out
    else:
        assert status == 1 and listed(out, beside.resolve()) == {2: "invalid_json"}, out
    assert "note:" not in out


def test_relative_data_file_only_in_cwd_is_read_from_there(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Not beside the config but in the current directory: read from there, as Axolotl does."""
    cfg_path, beside, cwd = _two_data_files(tmp_path, good_beside_config=True)
    beside.unlink()
    cfg = write_config(cfg_path, tiny_model_dir, [marker_dataset("data.jsonl")])
    monkeypatch.chdir(cwd)
    status, out, _ = run_main(capsys, cfg)
    assert status == 1 and listed(out, Path("data.jsonl")) == {2: "invalid_json"}, out


def test_relative_model_and_tokenizer_folders_beside_the_config(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`base_model` and `tokenizer_config` written relative to the config's folder load from any cwd."""
    cfg_path, _, cwd = _two_data_files(tmp_path, good_beside_config=True)
    (cfg_path.parent / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    (cfg_path.parent / "tok").symlink_to(tiny_model_dir, target_is_directory=True)
    write_config(cfg_path, Path("model"), [marker_dataset("data.jsonl")], tokenizer_config="tok")
    monkeypatch.chdir(cwd)
    status, out, _ = run_main(capsys, cfg_path)
    assert status == 0, out
    assert f"processor: {(cfg_path.parent / 'model').resolve()} " in out


def test_missing_local_dataset_exits_2_naming_the_key(tiny_model_dir, tmp_path, monkeypatch, capsys):
    folder, cwd = tmp_path / "a", tmp_path / "cwd"
    folder.mkdir()
    cwd.mkdir()
    cfg = write_config(folder / "cfg.yml", tiny_model_dir, [marker_dataset("missing/data.jsonl")])
    monkeypatch.chdir(cwd)
    status, out, err = run_main(capsys, cfg)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("axolotl-qwenvl check: error: "), err
    assert "datasets[0].path: 'missing/data.jsonl' not found" in err
    assert str(cfg.resolve()) in err and str(cwd / "missing/data.jsonl") in err  # both places looked


BAD_CONFIGS = [
    # (YAML text, or a dict merged into a valid config; fragment of the one-line error)
    ("qwenvl: {video_fps: 0}", "qwenvl.video_fps: Input should be greater than 0 (got 0)"),
    ("qwenvl: {on_bad_record: ignore}", "qwenvl.on_bad_record: Input should be 'error' or 'skip'"),
    ("qwenvl: {imag_max_pixels: 10}", "qwenvl.imag_max_pixels: Extra inputs are not permitted"),
    ("qwenvl: {image_min_pixels: 9000, image_max_pixels: 100}", "qwenvl.image_min_pixels (9000) must not exceed"),
    ("plugins: []", "`plugins` does not list axolotl_qwenvl_plugin.QwenVLPlugin"),
    ("sample_packing: true", "`sample_packing: true` is not supported"),
    ("excess_length_strategy: truncate", "`excess_length_strategy: truncate` would cut records"),
    ("sequence_len: long", "`sequence_len` must be an integer"),
    ("chat_template: no_such_template", "chat_template: Template 'no_such_template' not found"),
    ("base_model: /nonexistent/model", "cannot load the processor from '/nonexistent/model'"),
    ("datasets: [{path: nowhere.jsonl, type: axolotl_qwenvl_plugin.marker_jsonl}]", "datasets[0].path: 'nowhere.jsonl' not found"),
    ("datasets: [{path: tatsu-lab/alpaca, type: alpaca}]", "no dataset with `type: axolotl_qwenvl_plugin.marker_jsonl`"),
    ("a: [unclosed", "is not valid YAML"),
    ("- just\n- a list", "must be a YAML mapping"),
]


@pytest.mark.parametrize("yaml_text, fragment", BAD_CONFIGS, ids=[f[1][:40] for f in BAD_CONFIGS])
def test_config_errors_exit_2_with_one_line(corpus, tiny_model_dir, tmp_path, capsys, yaml_text, fragment):
    try:
        override = yaml.safe_load(yaml_text)
    except yaml.YAMLError:
        override = None
    path = tmp_path / "cfg.yml"
    if isinstance(override, dict):
        cfg = yaml.safe_load(corpus_config(corpus, tiny_model_dir, "base.yml").read_text())
        for key, value in override.items():
            cfg[key] = {**cfg[key], **value} if key == "qwenvl" else value
        path.write_text(yaml.safe_dump(cfg))
    else:
        path.write_text(yaml_text)
    status, out, err = run_main(capsys, path)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("axolotl-qwenvl check: error: "), err
    assert fragment in err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.yml")]) == 2
    _, err = capsys.readouterr()
    assert err == f"axolotl-qwenvl check: error: config file not found: {tmp_path / 'missing.yml'}\n"
    assert cli.main([]) == 2  # no command: help on stderr
    assert "check" in capsys.readouterr().err
    assert cli.main(["check"]) == 2  # argparse's own usage error, returned rather than raised
    assert "the following arguments are required: CONFIG.yml" in capsys.readouterr().err
    assert cli.main(["check", "--help"]) == 0
    assert "Exit status" in capsys.readouterr().out


# ------------------------------------------------------------------------------ bounded memory


def write_many_records(folder: Path, count: int) -> Path:
    """`count` text records sharing four small images, so media decode once and memory is all records."""
    for index in range(4):
        write_image(folder / "media" / f"img{index}.png", 56 + 28 * index, 56, seed=index)
    data = folder / "many.jsonl"
    with open(data, "w") as out:
        for k in range(count):
            record = {"text": f"Record {k}: the cat <image_no_1> sat on the mat.", "images": [f"media/img{k % 4}.png"]}
            out.write(json.dumps(record) + "\n")
    return data


def test_memory_does_not_grow_with_record_count(tmp_path, tiny_model_dir, capsys):
    """The Python-heap peak for 10x the records stays flat: no row is kept, only counters and histograms."""
    configs = {}
    for count in (300, 3_000):
        data = write_many_records(tmp_path / str(count), count)
        configs[count] = write_config(tmp_path / f"{count}.yml", tiny_model_dir, [marker_dataset(data)])
    run_main(capsys, configs[300])  # first imports and file caches happen outside the measurement
    peaks = {}
    for count, cfg in configs.items():
        tracemalloc.start()
        status, out, _ = run_main(capsys, cfg)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert status == 0 and f"records: {count} total, {count} ok" in out
    # Keeping the rows would add ~2.5 KB per record (6.7 MB here). What does grow is the `tokenizers`
    # library's own leak, 64 B per encode call (2 calls per record here: ~0.35 MB), outside this package.
    assert peaks[3_000] - peaks[300] < 1.5 * 2**20, peaks


# 100k records take ~95 s on the 2-core CI machine (about 30 s of it is importing torch/transformers),
# so the default is 20k; QWENVL_CHECK_RECORDS=100000 runs the full size.
BIG_RECORDS = int(os.environ.get("QWENVL_CHECK_RECORDS", "20000"))
RSS_LIMIT_BYTES = 1536 * 2**20  # measured: 1.28 GB peak at 20k and 1.29 GB at 100k, mostly torch + transformers


@pytest.mark.slow
def test_many_records_in_a_subprocess_with_bounded_rss(tmp_path, tiny_model_dir):
    data = write_many_records(tmp_path, BIG_RECORDS)
    cfg = write_config(tmp_path / "cfg.yml", tiny_model_dir, [marker_dataset(data)])
    # A small parent measures its own children only, so no earlier subprocess of pytest counts.
    measure = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        proc = subprocess.run([{str(CONSOLE_SCRIPT)!r}, "check", {str(cfg)!r}, "--no-progress"],
                              capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", proc.returncode)
        """
    )
    proc = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, timeout=600, env=_env())
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    max_rss_kb, rc = map(int, re.search(r"MAXRSS_KB (\d+) RC (\d+)", proc.stdout).groups())
    assert rc == 0, proc.stdout[-3000:]
    assert f"records: {BIG_RECORDS} total, {BIG_RECORDS} ok, 0 bad, 0 too long" in proc.stdout
    assert "media: 4 image(s) and 0 video(s) decoded" in proc.stdout  # each file decoded once
    assert max_rss_kb * 1024 < RSS_LIMIT_BYTES, f"peak RSS {max_rss_kb / 1024:.0f} MB"

"""The README describes what is real: its commands, configs, snippet and error messages."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import REPO_ROOT
from helpers import write_minimal_config

README = (REPO_ROOT / "README.md").read_text()
PACKAGE = REPO_ROOT / "axolotl_qwenvl_plugin"


def test_quick_start_commands_are_make_targets():
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def test_every_config_and_file_the_readme_names_exists():
    named = set(re.findall(r"(example_configs/[\w./-]+\.yml|benchmarks/[\w./-]+\.(?:py|sh|md|png))", README))
    assert "example_configs/qwenvl.yml" in named and len(named) > 8
    for path in sorted(named):
        assert (REPO_ROOT / path).is_file(), path
    shipped = {f"example_configs/{p.name}" for p in (REPO_ROOT / "example_configs").glob("*.yml")}
    assert shipped <= named, f"configs the README does not mention: {shipped - named}"


def test_the_add_to_an_existing_config_snippet_validates(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg

    section = README.split("## Add the plugin to an existing Axolotl config", 1)[1]
    snippet = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    assert len(section.split("```yaml", 1)[1].split("```", 1)[0].strip().splitlines()) == 5
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "hello"}\n')
    config = write_minimal_config(tmp_path, tiny_model_dir)
    raw = yaml.safe_load(config.read_text())
    raw.update(snippet)  # the user's own config plus the five lines
    raw.pop("qwenvl")
    config.write_text(yaml.safe_dump(raw))
    cfg = load_cfg(str(config))
    assert cfg.datasets[0]["type"] == "axolotl_qwenvl_plugin.marker_jsonl"
    assert cfg.remove_unused_columns is False


def test_every_qwenvl_key_is_documented():
    from axolotl_qwenvl_plugin.args import QwenVLConfig

    table = README.split("## The `qwenvl:` block", 1)[1].split("\n## ", 1)[0]
    for key in QwenVLConfig.model_fields:
        assert f"`{key}`" in table, key


def _source_text() -> str:
    """The plugin's code plus Axolotl's data utilities, where the quoted messages come from."""
    import axolotl.utils.data.utils as axolotl_data

    texts = [p.read_text() for p in PACKAGE.glob("*.py")] + [Path(axolotl_data.__file__).read_text()]
    return re.sub(r'"\s*\n\s*f?"', "", "\n".join(texts))  # join implicitly concatenated strings


def test_troubleshooting_messages_are_the_real_ones():
    table = README.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    quoted = [m.strip("` ") for m in re.findall(r"^\| (`[^|]+`) \|", table, re.M)]
    assert len(quoted) >= 8
    source = _source_text()
    for message in quoted:
        # the fixed words of each message (the parts between the file names, numbers and keys it fills in)
        words = [w for w in re.split(r"data/train\.jsonl:\d+: |'[^']*'|\d+|<image_no_\d>|\[.*?\]|\.\.\.|: |\(|\)", message)
                 if len(w.strip(" :,()")) > 12]  # fmt: skip
        assert words, message
        for fragment in words:
            assert fragment.strip(" :,()") in source, f"README quotes {fragment!r}, which no message contains"

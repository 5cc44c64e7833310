"""Every shipped example config passes Axolotl's own validation with the plugin loaded.

Configs that name a Hub model are validated against the tiny local model instead (no Hub here);
everything else is exactly as shipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "example_configs").glob("*.yml"))


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(config_path: Path, tiny_model_dir, tmp_path, monkeypatch):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    raw = yaml.safe_load(config_path.read_text())
    assert "axolotl_qwenvl_plugin.QwenVLPlugin" in raw["plugins"]
    raw["base_model"] = str(tiny_model_dir)
    raw["output_dir"] = str(tmp_path / "out")
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_cfg(DictDefault(raw))
    assert cfg.remove_unused_columns is False
    assert cfg.qwenvl["loader"] in ("auto", "unsloth", "transformers")
    for ds in cfg.datasets:
        assert ds["type"] == "axolotl_qwenvl_plugin.marker_jsonl"


def test_demo_data_is_shipped():
    config = REPO_ROOT / "example_configs/qwenvl-tiny.yml"
    data = config.parent / yaml.safe_load(config.read_text())["datasets"][0]["path"]  # relative to the config
    lines = data.read_text().splitlines()
    assert 20 <= len(lines) <= 40

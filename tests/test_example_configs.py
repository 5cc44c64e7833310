"""Every shipped example config passes Axolotl's own validation with the plugin loaded, its sample
data passes `axolotl-qwenvl check`, and it validates from any working directory.

Configs that name a Hub model are validated against the tiny local model instead (no Hub here);
everything else is exactly as shipped. A config with `qwenvl.loader: unsloth` is validated as on a
CUDA machine with the `unsloth` extra (the loader's config-time checks run; nothing is loaded).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

from axolotl_qwenvl_plugin import cli, loading
from axolotl_qwenvl_plugin.plugin import resolve_config_relative_paths

EXAMPLES = REPO_ROOT / "example_configs"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))
STRATEGY = "axolotl_qwenvl_plugin.marker_jsonl"
PLUGIN = "axolotl_qwenvl_plugin.QwenVLPlugin"


def read(config_path: Path) -> dict:
    return yaml.safe_load(config_path.read_text())


@pytest.fixture
def as_on_its_gpu(monkeypatch):
    """`loader: unsloth` configs are refused at config time on CPU; validate them as on their GPU."""
    monkeypatch.setattr(loading, "cuda_available", lambda: True)
    monkeypatch.setattr(loading, "unsloth_installed", lambda: True)
    monkeypatch.setenv("UNSLOTH_RETURN_LOGITS", "0")  # recorded, so a change by register is undone
    monkeypatch.delenv("UNSLOTH_RETURN_LOGITS")


def assert_plugin_config(cfg) -> None:
    assert cfg.remove_unused_columns is False
    assert cfg.qwenvl["loader"] in ("auto", "unsloth", "transformers")
    assert cfg.datasets
    for ds in cfg.datasets:
        assert ds["type"] == STRATEGY


def test_every_config_is_covered():
    names = {path.name for path in CONFIGS}
    assert {
        "qwenvl.yml", "qwenvl-tiny.yml", "qwenvl-image-captioning.yml", "qwenvl-video-qa.yml",
        "qwenvl-continued-pretraining.yml", "qwenvl-2gpu.yml", "qwenvl-7b-24gb.yml",
    } <= names  # fmt: skip


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(config_path: Path, tiny_model_dir, tmp_path, monkeypatch, as_on_its_gpu):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    raw = read(config_path)
    assert PLUGIN in raw["plugins"]
    assert re.fullmatch(r"(Qwen/Qwen2\.5-VL-(3|7)B-Instruct|\.\./\.cache/tiny-qwen2\.5-vl)", raw["base_model"])
    raw["base_model"] = str(tiny_model_dir)
    raw["output_dir"] = str(tmp_path / "out")
    # A dict has no folder of its own: its relative paths are read from the cwd, the config's folder.
    monkeypatch.chdir(config_path.parent)
    assert_plugin_config(load_cfg(DictDefault(raw)))


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates_from_its_file_in_any_directory(config_path: Path, tiny_model_dir, tmp_path, monkeypatch, as_on_its_gpu):
    """Loaded from its own path, as `axolotl train example_configs/x.yml` does, with an unrelated cwd."""
    from axolotl.cli.config import load_cfg

    monkeypatch.chdir(tmp_path)
    cfg = load_cfg(str(config_path), base_model=str(tiny_model_dir))  # a CLI override, as `--base-model`
    assert_plugin_config(cfg)
    for ds, shipped in zip(cfg.datasets, read(config_path)["datasets"], strict=True):
        assert Path(ds["path"]) == (config_path.parent / shipped["path"]).resolve()
        assert Path(ds["path"]).is_file()
    assert not Path(cfg.output_dir).is_absolute()  # outputs stay relative to where it is run


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_example_config_sample_data_passes_check(config_path: Path, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`axolotl-qwenvl check` exits 0 on every shipped sample record, with the config's own media
    settings (a copy with the tiny model and the config's paths made absolute)."""
    raw = read(config_path)
    raw["base_model"] = str(tiny_model_dir)
    raw["axolotl_config_path"] = str(config_path)
    resolve_config_relative_paths(raw, argv=["axolotl", "train"])
    del raw["axolotl_config_path"]
    media_dir = (raw.get("qwenvl") or {}).get("media_dir")
    if media_dir:
        raw["qwenvl"]["media_dir"] = str(config_path.parent / media_dir)
    copy = tmp_path / config_path.name
    copy.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)

    status = cli.run_check(copy, progress=False)
    out = capsys.readouterr().out
    assert status == 0, out
    for ds in raw["datasets"]:
        lines = len(Path(ds["path"]).read_text().splitlines())
        assert f"records: {lines} total, {lines} ok, 0 bad, 0 too long" in out, out


@pytest.mark.parametrize("config_path", [p for p in CONFIGS if p.name != "qwenvl-tiny.yml"], ids=lambda p: p.name)
def test_sample_data_is_small_and_uses_the_demo_media(config_path: Path):
    raw = read(config_path)
    assert raw["qwenvl"]["media_dir"] == "demo/media"
    for ds in raw["datasets"]:
        data = config_path.parent / ds["path"]
        assert data.parent == EXAMPLES / "data"
        assert 3 <= len(data.read_text().splitlines()) <= 6


def test_7b_recipe_is_the_measured_configuration():
    """example_configs/qwenvl-7b-24gb.yml keeps the settings of the measured job
    (benchmarks/results/2026-11-28-h100-suite.md, A-7b-image-b16-s12-gcT)."""
    raw = read(EXAMPLES / "qwenvl-7b-24gb.yml")
    assert raw["qwenvl"]["loader"] == "unsloth" and raw["load_in_4bit"] is True
    assert raw["micro_batch_size"] == 16 and raw["gradient_accumulation_steps"] == 1
    assert raw["qwenvl"]["use_gradient_checkpointing"] is True and raw["gradient_checkpointing"] is True
    assert raw["qwenvl"]["batched_vision_attention"] is True
    assert raw["qwenvl"]["finetune_vision_layers"] is False
    assert raw["qwenvl"]["image_max_pixels"] == 576 * 28 * 28  # the benchmark's 672x672 images
    assert raw["lora_r"] == 16 and raw["peft_use_rslora"] is True and raw["optimizer"] == "adamw_8bit"


def test_multi_gpu_config_uses_ddp_with_either_loader():
    raw = read(EXAMPLES / "qwenvl-2gpu.yml")
    assert raw["qwenvl"]["loader"] == "auto"  # Unsloth per rank on GPUs with the extra, else bitsandbytes + PEFT
    assert raw["adapter"] == "qlora" and raw["load_in_4bit"] is True
    assert raw["ddp_find_unused_parameters"] is False
    assert raw["qwenvl"]["finetune_vision_layers"] is False  # every trainable parameter gets a gradient
    # Axolotl's auto-enabled LoRA kernels fail on Qwen2.5-VL (seen on 2x H100 with this config)
    assert all(raw[f"lora_{name}_kernel"] is False for name in ("mlp", "qkv", "o", "embedding"))
    header = (EXAMPLES / "qwenvl-2gpu.yml").read_text()
    assert "axolotl train example_configs/qwenvl-2gpu.yml --launcher accelerate -- --num_processes 2" in header


def test_demo_data_is_shipped():
    config = EXAMPLES / "qwenvl-tiny.yml"
    data = config.parent / read(config)["datasets"][0]["path"]  # relative to the config
    lines = data.read_text().splitlines()
    assert 20 <= len(lines) <= 40

"""Which multi-GPU combinations the plugin accepts, decided at config time (issue 8).

Supported and tested: DDP with `qwenvl.loader: transformers` (tests/test_ddp.py on CPU, and a
2xH100 run in benchmarks/results) and with `loader: unsloth` (2xH100 runs in benchmarks/results:
Unsloth needs a GPU, so its DDP side is not testable on CPU; here, only the config decision and the
per-rank device map). Refused: DeepSpeed / FSDP with Unsloth. Accepted with a warning: DeepSpeed / FSDP with the transformers
loader (not tested here). The GPU and the unsloth extra are faked where the rule depends on
them: this machine has neither, and only the config decision is under test.
"""

from __future__ import annotations

import logging

import pytest

from axolotl_qwenvl_plugin import loading
from helpers import write_minimal_config


@pytest.fixture
def gpu_box(monkeypatch):
    """A CUDA machine with the unsloth extra, as far as the config checks can tell."""
    monkeypatch.setattr(loading, "cuda_available", lambda: True)
    monkeypatch.setattr(loading, "unsloth_installed", lambda: True)


def _launch(monkeypatch, world: int, rank: int = 0):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def _load(tmp_path, tiny_model_dir, **overrides):
    from axolotl.cli.config import load_cfg

    return load_cfg(str(write_minimal_config(tmp_path, tiny_model_dir, **overrides)))


def _register(tmp_path, tiny_model_dir, **overrides) -> dict:
    """The plugin's config-time hook on the raw YAML of a rank (Axolotl's own load_cfg needs a
    real GPU once WORLD_SIZE > 1: it probes CUDA peer access and maps the model to a GPU)."""
    import yaml

    from axolotl_qwenvl_plugin import QwenVLPlugin

    raw = yaml.safe_load(write_minimal_config(tmp_path, tiny_model_dir, **overrides).read_text())
    QwenVLPlugin().register(raw)
    return raw


def test_transformers_loader_is_accepted_under_ddp(tmp_path, tiny_model_dir, monkeypatch):
    _launch(monkeypatch, 2, rank=1)
    cfg = _register(tmp_path, tiny_model_dir, qwenvl={"loader": "transformers"})
    assert cfg["lora_qkv_kernel"] is False and cfg["lora_mlp_kernel"] is False
    assert isinstance(cfg["lora_target_modules"], str)  # the finetune_* regex, as on one GPU


def test_unsloth_loader_is_accepted_under_ddp_with_one_gpu_per_rank(tmp_path, tiny_model_dir, monkeypatch, gpu_box):
    from axolotl_qwenvl_plugin.settings import qwenvl_settings

    _launch(monkeypatch, 2, rank=1)
    cfg = _register(tmp_path, tiny_model_dir, qwenvl={"loader": "unsloth"})
    assert cfg["lora_qkv_kernel"] is False and cfg["lora_mlp_kernel"] is False
    # FastVisionModel.from_pretrained puts rank 1's whole copy on its own GPU
    kwargs = loading.unsloth_from_pretrained_kwargs(cfg, qwenvl_settings(cfg), offline=True)
    assert kwargs["device_map"] == {"": 1}


def test_unsloth_loader_is_accepted_on_one_process(tmp_path, tiny_model_dir, monkeypatch, gpu_box):
    _launch(monkeypatch, 1)
    cfg = _load(tmp_path, tiny_model_dir, qwenvl={"loader": "unsloth"})
    assert cfg.lora_qkv_kernel is False  # Unsloth's model never gets Axolotl's kernels


@pytest.mark.parametrize("world", [1, 2, 8])
def test_auto_picks_unsloth_on_gpus_whatever_the_process_count(monkeypatch, world):
    _launch(monkeypatch, world)
    assert loading.resolve_loader("auto", cuda_available=True, unsloth_installed=True) == "unsloth"
    assert loading.check_loader_supported("auto", cuda_available=True, unsloth_installed=True) == "unsloth"
    assert loading.check_loader_supported("auto", cuda_available=True, unsloth_installed=False) == "transformers"


@pytest.mark.parametrize(
    "sharding",
    [{"deepspeed": "deepspeed_configs/zero2.json"}, {"fsdp": ["full_shard"]},
     {"fsdp_config": {"fsdp_version": 2}}],  # fmt: skip
    ids=["deepspeed", "fsdp", "fsdp_config"],
)
def test_sharding_is_refused_with_unsloth(sharding):
    cfg = {"adapter": "qlora", "load_in_4bit": True, **sharding}
    problems = loading.axolotl_keys_for_loader(cfg, "unsloth", loading_settings())
    key = next(iter(sharding))
    assert any(f"`{key}` is not supported with qwenvl.loader: unsloth" in p for p in problems)


@pytest.mark.parametrize("key", ["deepspeed", "fsdp", "fsdp_config"])
def test_sharding_with_transformers_is_accepted_with_a_warning(key, caplog):
    cfg = {"adapter": "qlora", "load_in_4bit": True, key: {"x": 1}}
    with caplog.at_level(logging.WARNING):
        problems = loading.axolotl_keys_for_loader(cfg, "transformers", loading_settings())
    assert problems == []
    assert any(f"`{key}` with qwenvl.loader: transformers is not tested" in r.getMessage() for r in caplog.records)


def loading_settings():
    from axolotl_qwenvl_plugin.args import QwenVLConfig

    return QwenVLConfig()

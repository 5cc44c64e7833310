"""Reading the plugin's settings out of a validated Axolotl config (a `DictDefault`)."""

from __future__ import annotations

from pathlib import Path

from .args import QwenVLConfig


def qwenvl_settings(cfg) -> QwenVLConfig:
    """The `qwenvl:` block of a (validated or raw) Axolotl config as a `QwenVLConfig`."""
    block = cfg.get("qwenvl") if hasattr(cfg, "get") else None
    if isinstance(block, QwenVLConfig):
        return block
    return QwenVLConfig(**dict(block or {}))


def config_dir(cfg) -> Path:
    """The folder of the YAML file, which relative plugin paths are resolved against."""
    path = cfg.get("axolotl_config_path") if hasattr(cfg, "get") else None
    return Path(path).resolve().parent if path else Path.cwd()


def media_dir_for(cfg, settings: QwenVLConfig, data_file: str) -> Path:
    """Where a data file's relative media paths point: `qwenvl.media_dir`, else the file's folder."""
    if settings.media_dir:
        media_dir = Path(settings.media_dir).expanduser()
        return (media_dir if media_dir.is_absolute() else config_dir(cfg) / media_dir).resolve()
    return Path(data_file).expanduser().resolve().parent


def processor_source(cfg) -> str:
    return str(cfg.get("processor_config") or cfg.get("base_model_config") or cfg.get("base_model"))


def load_processor(cfg, tokenizer=None):
    """The model's `Qwen2_5_VLProcessor`, sharing Axolotl's tokenizer when one is given."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        processor_source(cfg), trust_remote_code=bool(cfg.get("trust_remote_code"))
    )
    if tokenizer is not None:
        processor.tokenizer = tokenizer
    return processor

"""Reading the plugin's settings out of a validated Axolotl config (a `DictDefault`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .args import QwenVLConfig


def qwenvl_settings(cfg) -> QwenVLConfig:
    """The `qwenvl:` block of a (validated or raw) Axolotl config as a `QwenVLConfig`."""
    block = cfg.get("qwenvl") if hasattr(cfg, "get") else None
    if isinstance(block, QwenVLConfig):
        return block
    return QwenVLConfig(**dict(block or {}))


def config_file(cfg) -> Path | None:
    """The YAML file the config was read from, or None when it has no file of its own.

    Axolotl's `load_cfg` records the file as `axolotl_config_path` before any plugin's `register`
    runs. A config handed to `load_cfg` as a dict gets a throw-away copy in the temp folder
    (`axolotl_config_*.yml`): that folder says nothing about where the paths point, so it counts
    as no file.
    """
    path = cfg.get("axolotl_config_path") if hasattr(cfg, "get") else None
    if not path:
        return None
    path = Path(path).expanduser().resolve()
    if path.name.startswith(_AXOLOTL_TEMP_PREFIX) and path.parent == Path(tempfile.gettempdir()).resolve():
        return None
    return path


_AXOLOTL_TEMP_PREFIX = "axolotl_config_"  # axolotl.cli.config.load_cfg's NamedTemporaryFile prefix


def config_dir(cfg) -> Path:
    """The folder of the YAML file, which relative plugin paths are resolved against (else the cwd)."""
    path = config_file(cfg)
    return path.parent if path else Path.cwd()


def media_dir_for(cfg, settings: QwenVLConfig, data_file: str) -> Path:
    """Where a data file's relative media paths point: `qwenvl.media_dir`, else the file's folder."""
    if settings.media_dir:
        media_dir = Path(settings.media_dir).expanduser()
        return (media_dir if media_dir.is_absolute() else config_dir(cfg) / media_dir).resolve()
    return Path(data_file).expanduser().resolve().parent


def beside_config(value: str, cfg) -> str:
    """`value` read as the plugin reads relative input paths: next to the config file when it exists
    there (returned absolute), else unchanged (Axolotl's reading, from the current directory, or a
    Hub id). `plugin.resolve_config_relative_paths` applies the same rule to the whole config."""
    path = Path(value)
    config = config_file(cfg)
    if config is None or not value or value.startswith("~") or "://" in value or path.is_absolute():
        return value
    candidate = config.parent / path
    return str(candidate.resolve()) if candidate.exists() else value


def processor_source(cfg) -> str:
    """Where the processor loads from; a relative local folder as `register` resolves it, so a
    config that was not through `register` (e.g. `axolotl-qwenvl check`) finds the same one."""
    source = str(cfg.get("processor_config") or cfg.get("base_model_config") or cfg.get("base_model"))
    return beside_config(source, cfg)


def load_processor(cfg, tokenizer=None):
    """The model's `Qwen2_5_VLProcessor`, sharing Axolotl's tokenizer when one is given."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        processor_source(cfg), trust_remote_code=bool(cfg.get("trust_remote_code"))
    )
    if tokenizer is not None:
        processor.tokenizer = tokenizer
    return processor

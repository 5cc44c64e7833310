"""`QwenVLPlugin`: the thin Axolotl entry point. Each hook hands off to a module of this package.

    plugins:
      - axolotl_qwenvl_plugin.QwenVLPlugin
"""

from __future__ import annotations

from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from .args import QwenVLConfig

LOG = get_logger(__name__)

STRATEGY = "axolotl_qwenvl_plugin.marker_jsonl"
DEFAULT_PREPARED_PATH = "last_run_prepared"
DEFAULT_EMBEDDING_LR_SCALE = 0.1


class QwenVLConfigError(ValueError):
    """An Axolotl key contradicts what the plugin needs."""


class QwenVLPlugin(BasePlugin):
    """Marker-embedded JSONL -> exact Qwen2.5-VL batches, with Unsloth or transformers loading."""

    def get_input_args(self) -> str:
        return "axolotl_qwenvl_plugin.args.QwenVLArgs"

    def register(self, cfg: dict):
        """Set the Axolotl keys the plugin depends on; refuse the ones that contradict it.

        Runs on the raw config, before Axolotl validates it.
        """
        apply_required_axolotl_keys(cfg)

    def post_trainer_create(self, cfg, trainer):
        dataset = trainer.train_dataset
        if dataset is not None and hasattr(dataset, "__len__"):
            LOG.info("qwenvl: training on %d records", len(dataset))

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        from .collator import QwenVLDataCollator
        from .settings import processor_source, qwenvl_settings

        settings = qwenvl_settings(cfg)
        return QwenVLDataCollator, {
            "processor_source": processor_source(cfg),
            "on_bad_record": settings.on_bad_record,
            "trust_remote_code": bool(cfg.trust_remote_code),
        }


def apply_required_axolotl_keys(cfg: dict) -> None:
    """The Axolotl settings this plugin needs, applied to a raw config dict (pure, testable)."""
    problems = []

    # Prepared rows carry `qwenvl_media`; the Trainer must hand it to the collator.
    if cfg.get("remove_unused_columns") is True:
        problems.append("`remove_unused_columns: true` would drop the media column; remove it or set it to false")
    cfg["remove_unused_columns"] = False

    if cfg.get("sample_packing"):
        problems.append(
            "`sample_packing: true` is not supported: packing would merge vision spans and M-RoPE "
            "positions of different records; set it to false"
        )
    if cfg.get("skip_prepare_dataset"):
        problems.append(
            "`skip_prepare_dataset: true` skips the marker strategy that tokenizes records and counts "
            "vision pads; remove it"
        )
    if str(cfg.get("excess_length_strategy") or "").lower() == "truncate":
        problems.append(
            "`excess_length_strategy: truncate` would cut records inside vision spans; use `drop` "
            "(the default) or `raise`"
        )

    # Row i of a `.jsonl` file must be line i + 1, so load it as text lines and parse them here.
    for index, ds in enumerate(cfg.get("datasets") or []):
        if not hasattr(ds, "get") or ds.get("type") != STRATEGY:
            continue
        path = str(ds.get("path") or "")
        if path.endswith(".jsonl") and ds.get("ds_type") in (None, "json"):
            ds["ds_type"] = "text"
        elif ds.get("ds_type") == "text" and not path.endswith(".jsonl"):
            problems.append(f"datasets[{index}]: `ds_type: text` is reserved for marker .jsonl files")

    # Trained embeddings / lm_head move far more per step than LoRA factors: give them a 10x
    # lower learning rate unless the user chose one (Axolotl applies it as a param group).
    trained = set(cfg.get("lora_modules_to_save") or [])
    if trained & {"embed_tokens", "lm_head"} and cfg.get("embedding_lr_scale") is None and cfg.get("embedding_lr") is None:
        cfg["embedding_lr_scale"] = DEFAULT_EMBEDDING_LR_SCALE
        LOG.info("qwenvl: embed_tokens/lm_head are trained; embedding_lr_scale set to %s", DEFAULT_EMBEDDING_LR_SCALE)

    if problems:
        raise QwenVLConfigError("qwenvl plugin: " + "; ".join(problems))

    # Prepared records depend on the qwenvl settings, but Axolotl's dataset cache key does not
    # include them: keep one cache folder per settings fingerprint so a change re-prepares.
    try:
        settings = QwenVLConfig(**dict(cfg.get("qwenvl") or {}))
    except (TypeError, ValueError):
        return  # Axolotl's validation reports the bad `qwenvl.*` key right after this hook
    prepared = Path(cfg.get("dataset_prepared_path") or DEFAULT_PREPARED_PATH)
    if not prepared.name.startswith("qwenvl-"):
        cfg["dataset_prepared_path"] = str(prepared / f"qwenvl-{settings.preparation_fingerprint()}")

"""`QwenVLPlugin`: the thin Axolotl entry point. Each hook hands off to a module of this package.

    plugins:
      - axolotl_qwenvl_plugin.QwenVLPlugin
"""

from __future__ import annotations

import sys
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from .args import QwenVLConfig
from .errors import install_clean_exit_for_data_errors
from .reporting import SkipLog

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
        apply_loader_keys(cfg)
        install_clean_exit_for_data_errors()

    def pre_model_load(self, cfg):
        """With `qwenvl.loader` resolving to unsloth, route Axolotl's ModelLoader through
        FastVisionModel (see `loading.install_unsloth_loader_patch` for the hook design)."""
        from . import loading
        from .settings import qwenvl_settings

        loader = loading.resolve_loader(
            qwenvl_settings(cfg).loader,
            cuda_available=loading.cuda_available(),
            unsloth_installed=loading.unsloth_installed(),
        )
        if loader != "unsloth":
            LOG.info("qwenvl: loader transformers (Axolotl's own loading, bitsandbytes + PEFT)")
            return
        loading.prepare_unsloth_environment()
        if loading.install_unsloth_loader_patch():
            LOG.info("qwenvl: loader unsloth: ModelLoader routed through FastVisionModel")

    def post_trainer_create(self, cfg, trainer):
        dataset = trainer.train_dataset
        if dataset is not None and hasattr(dataset, "__len__"):
            LOG.info("qwenvl: training on %d records", len(dataset))
        if cfg.output_dir:
            SkipLog(cfg.output_dir).clear_stage("train")  # this run's collator skips start at zero

    def post_train(self, cfg, model):
        # Axolotl calls this hook twice; the summary is the same both times, so log it once.
        if getattr(self, "_skip_summary_logged", False) or not cfg.output_dir:
            return
        self._skip_summary_logged = True
        summary = SkipLog(cfg.output_dir).summary()
        if summary:
            LOG.warning(summary)

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        from .collator import QwenVLDataCollator
        from .settings import processor_source, qwenvl_settings

        settings = qwenvl_settings(cfg)
        return QwenVLDataCollator, {
            "processor_source": processor_source(cfg),
            "on_bad_record": settings.on_bad_record,
            "trust_remote_code": bool(cfg.trust_remote_code),
            "skip_log_dir": str(cfg.output_dir) if cfg.output_dir and settings.on_bad_record == "skip" else None,
        }


def apply_loader_keys(cfg: dict, *, cuda_available: bool | None = None, unsloth_installed: bool | None = None) -> str | None:
    """Resolve `qwenvl.loader` on this machine and make the raw config agree with it.

    Refuses `loader: unsloth` where it cannot run (no GPU, no unsloth extra), applies the LoRA
    target mapping and the keys each loader needs (`loading.axolotl_keys_for_loader`), and asks
    Unsloth for logits when an Axolotl feature reads them. Returns the loader, or None when the
    `qwenvl:` block is invalid (Axolotl's validation reports that right after `register`).
    """
    from . import loading

    try:
        settings = QwenVLConfig(**dict(cfg.get("qwenvl") or {}))
    except (TypeError, ValueError):
        return None
    if cuda_available is None:
        cuda_available = loading.cuda_available()
    if unsloth_installed is None:
        unsloth_installed = loading.unsloth_installed()
    # `axolotl preprocess` / `inference` / `merge-lora` never load through Unsloth (the plugin's
    # ModelLoader patch only takes the training load), so a CPU box can still preprocess, run
    # inference on or merge the adapter of a `loader: unsloth` config, and the keys that only
    # the Unsloth training load refuses (e.g. `lora_model_dir`, which merges use) are left alone.
    training = is_training_command(cfg)
    check = loading.check_loader_supported if training else loading.resolve_loader
    try:
        loader = check(
            settings.loader, cuda_available=cuda_available, unsloth_installed=unsloth_installed
        )
        problems = []
        if training or loader == "transformers":
            problems = loading.axolotl_keys_for_loader(cfg, loader, settings)
    except ValueError as err:
        raise QwenVLConfigError(f"qwenvl plugin: {err}") from None
    if problems:
        raise QwenVLConfigError("qwenvl plugin: " + "; ".join(problems))
    if loader == "unsloth" and training:
        loading.request_unsloth_logits(cfg)
    return loader


_NON_TRAINING_COMMANDS = ("preprocess", "inference", "merge-lora", "merge_lora")


def is_training_command(cfg, argv: list[str] | None = None) -> bool:
    """False for `axolotl preprocess` / `inference` / `merge-lora`: Axolotl marks the config of
    the first two (`is_preprocess`, `inference`) and of merge-lora's second load (`merge_lora`);
    merge-lora's first load is only told by the command line."""
    if cfg.get("is_preprocess") or cfg.get("inference") or cfg.get("merge_lora"):
        return False
    argv = sys.argv if argv is None else argv
    if len(argv) > 1 and argv[1] in _NON_TRAINING_COMMANDS:  # `axolotl merge-lora cfg.yml`
        return False
    script = Path(argv[0]).stem if argv else ""
    return script not in {name.replace("-", "_") for name in _NON_TRAINING_COMMANDS}


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
    for ds in [*(cfg.get("datasets") or []), *(cfg.get("test_datasets") or [])]:
        if not hasattr(ds, "get") or ds.get("type") != STRATEGY:
            continue
        path = str(ds.get("path") or "")
        if path.endswith(".jsonl") and ds.get("ds_type") in (None, "json"):
            ds["ds_type"] = "text"
        elif ds.get("ds_type") == "text" and not path.endswith(".jsonl"):
            problems.append(f"dataset {path}: `ds_type: text` is reserved for marker .jsonl files")

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

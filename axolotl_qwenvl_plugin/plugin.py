"""`QwenVLPlugin`: the thin Axolotl entry point. Each hook hands off to a module of this package.

    plugins:
      - axolotl_qwenvl_plugin.QwenVLPlugin
"""

from __future__ import annotations

import os
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
        resolve_config_relative_paths(cfg)
        apply_required_axolotl_keys(cfg)
        apply_dataloader_defaults(cfg)
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

    def post_model_load(self, cfg, model):
        from .settings import qwenvl_settings
        from .vision_attention import batch_vision_attention

        if qwenvl_settings(cfg).batched_vision_attention:
            changed = batch_vision_attention(model)
            if changed:
                LOG.info("qwenvl: vision attention batched per window size in %d ViT blocks "
                         "(qwenvl.batched_vision_attention)", changed)  # fmt: skip

    def post_trainer_create(self, cfg, trainer):
        dataset = trainer.train_dataset
        if dataset is not None and hasattr(dataset, "__len__"):
            LOG.info("qwenvl: training on %d records", len(dataset))
        if cfg.output_dir and trainer.is_world_process_zero():
            SkipLog(cfg.output_dir).clear_stage("train")  # this run's collator skips start at zero
        if trainer.args.dataloader_num_workers > 0:
            # Axolotl has no key for it; without it every epoch restarts the workers and the GPU
            # waits for their first batches (short overfit sets restart them every few steps).
            trainer.args.dataloader_persistent_workers = True

    def add_callbacks_post_trainer(self, cfg, trainer):
        from .frozen_vision import FrozenVisionGradients

        return [FrozenVisionGradients()]

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
            "pad_media_free_batches": settings.pad_media_free_batches,
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
    return not _invoked_as(_NON_TRAINING_COMMANDS, argv)


def _invoked_as(commands: tuple[str, ...], argv: list[str] | None = None) -> bool:
    """Whether this process runs one of Axolotl's `commands`: `axolotl merge-lora cfg.yml`, or a
    launcher's `-m axolotl.cli.merge_lora` (the script name, with `_` for `-`)."""
    argv = sys.argv if argv is None else argv
    if len(argv) > 1 and argv[1] in commands:
        return True
    script = Path(argv[0]).stem if argv else ""
    return script in {name.replace("-", "_") for name in commands}


# Axolotl keys naming a model folder when one exists there, else a Hugging Face Hub id.
_MODEL_PATH_KEYS = ("base_model", "base_model_config", "tokenizer_config", "processor_config")
# A dataset `path` with one of these endings is a file, never a Hub id, so a missing one is an error.
_DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt")
# Commands that never read the training data: a dataset missing on this machine is not their problem.
_NO_DATASET_COMMANDS = (
    "inference", "merge-lora", "merge_lora", "quantize", "vllm-serve", "vllm_serve",
    "merge-sharded-fsdp-weights", "merge_sharded_fsdp_weights",
)  # fmt: skip


def resolve_config_relative_paths(cfg: dict, argv: list[str] | None = None) -> None:
    """Make a config's relative input paths mean the same from any working directory.

    Axolotl opens `datasets[].path`, `test_datasets[].path`, their `data_files` and a local
    `base_model` / `base_model_config` / `tokenizer_config` / `processor_config` relative to the
    current directory. A committed config should not depend on where it is run from, so each
    relative one is looked up, in this order:

    1. next to the config file (`axolotl_config_path`, which `load_cfg` records before any plugin's
       `register`): when it exists there, the key is rewritten to that absolute path (left as
       written when the current directory is that same folder);
    2. from the current directory, as Axolotl does: kept as written, with one info line, so configs
       written for Axolotl's rule (e.g. run from a repository root) keep working;
    3. found neither way: left alone when it may be a Hub id (`Qwen/Qwen2.5-VL-7B-Instruct`,
       `org/dataset`); a clear error naming the key, the config file and both places looked when
       it can only be local (a dataset path ending in a data-file suffix such as `.jsonl`, or
       anything that is not a valid Hub id, e.g. `./x`, `../x`, `a/b/c`, `.cache/model`).
       `axolotl inference` / `merge-lora` do not read the datasets, so for them a missing dataset
       file only warns.

    `data_files` are resolved only for a dataset whose `path` is a local folder (for a Hub dataset
    they are paths inside the Hub repository). Absolute paths, `~` paths and URLs
    (`s3://`, `https://`) are never touched, nor is anything when the config has no file of its own
    (a dict handed to `load_cfg`).

    Output paths (`output_dir`, `dataset_prepared_path`, `lora_model_dir`,
    `resume_from_checkpoint`) keep Axolotl's meaning, relative to the current directory, also
    when written `./outputs/...`: that is how every Axolotl example and user reads them, the run's
    outputs belong to where it is run rather than into a folder of committed configs, and
    `axolotl merge-lora` / `inference` find `output_dir` where `train` wrote it. `qwenvl.media_dir`
    resolves against the config's folder (settings.media_dir_for).
    """
    from .settings import config_file

    config = config_file(cfg)
    if config is None:
        return
    folder, cwd = config.parent, Path.cwd()
    reads_datasets = _reads_datasets(cfg, argv)
    problems: list[str] = []

    def resolve(where: str, value, *, data_file: bool = False, required: bool = True):
        if not isinstance(value, str) or not value or value.startswith("~") or "://" in value:
            return value
        path = Path(value)
        if path.is_absolute():
            return value
        beside_config, from_cwd = folder / path, cwd / path
        if beside_config.exists():
            if from_cwd.exists() and _same_file(beside_config, from_cwd):
                return value
            if from_cwd.exists():
                LOG.warning(
                    "qwenvl: %s %r resolves against the config's folder: %s (not %s of the current directory)",
                    where, value, beside_config.resolve(), from_cwd,
                )  # fmt: skip
            return str(beside_config.resolve())
        if from_cwd.exists():
            LOG.info(
                "qwenvl: %s %r is not in the config's folder %s; using it from the current directory %s, as Axolotl does",
                where, value, folder, cwd,
            )  # fmt: skip
            return value
        if _looks_local(value, data_file=data_file):
            message = (
                f"{where}: {value!r} not found, neither next to the config file {config} ({beside_config}) "
                f"nor from the current directory ({from_cwd})"
            )
            if required:
                problems.append(message)
            else:
                LOG.warning("qwenvl: %s", message)
        return value

    for key in _MODEL_PATH_KEYS:
        if cfg.get(key) is not None:
            cfg[key] = resolve(key, cfg.get(key))
    for list_key in ("datasets", "test_datasets"):
        for index, ds in enumerate(cfg.get(list_key) or []):
            if not hasattr(ds, "get") or ds.get("path") is None:
                continue
            where = f"{list_key}[{index}]"
            ds["path"] = resolve(f"{where}.path", ds.get("path"), data_file=True, required=reads_datasets)
            data_files = ds.get("data_files")
            if data_files is None or not Path(str(ds["path"])).is_dir():
                continue
            if isinstance(data_files, str):
                ds["data_files"] = resolve(f"{where}.data_files", data_files, required=False)
            elif isinstance(data_files, list):
                ds["data_files"] = [
                    resolve(f"{where}.data_files[{n}]", item, required=False) for n, item in enumerate(data_files)
                ]
    if problems:
        raise QwenVLConfigError(
            "qwenvl plugin: " + "; ".join(problems) + ". Relative input paths are looked up next to the "
            "config file first, then from the current directory"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _looks_local(value: str, *, data_file: bool) -> bool:
    """True when `value` cannot be a Hugging Face Hub id, so it can only name a local path."""
    if data_file and value.lower().endswith(_DATA_FILE_SUFFIXES):
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def _reads_datasets(cfg, argv: list[str] | None = None) -> bool:
    """False for the commands that never open the training data (inference, merge-lora, ...)."""
    if cfg.get("inference") or cfg.get("merge_lora"):
        return False
    return not _invoked_as(_NO_DATASET_COMMANDS, argv)


def default_dataloader_workers(cpus: int, local_processes: int) -> int:
    """Background collation workers per training process: half of this process's share of the
    CPUs, at least 1 and at most 4 (enough to keep an H100 fed with images and 16-frame videos)."""
    return max(1, min(4, cpus // (2 * max(1, local_processes))))


def apply_dataloader_defaults(cfg: dict) -> None:
    """The collator decodes images and video frames; with Axolotl's default of no DataLoader
    workers the GPU would wait for that every step. Unless the config says otherwise, collate in
    background workers, two batches ahead (pinned memory is already the Trainer's default)."""
    if cfg.get("dataloader_num_workers") is not None:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    cfg["dataloader_num_workers"] = default_dataloader_workers(cpus, local_processes)
    if cfg.get("dataloader_prefetch_factor") is None:
        cfg["dataloader_prefetch_factor"] = 2


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

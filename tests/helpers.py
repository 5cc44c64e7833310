"""Small helpers shared by the config and end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


# What every CPU training run of the tests shares: fp32 LoRA with plain AdamW, collation in the
# main process, a log line per step, no checkpoint unless a test asks for one.
CPU_TRAINING_KEYS = {
    "lr_scheduler": "constant",
    "optimizer": "adamw_torch",
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "dataloader_num_workers": 0,
    "logging_steps": 1,
    "save_steps": 100,
    "seed": 0,
}


def write_minimal_config(tmp_path: Path, tiny_model_dir: Path, **overrides) -> Path:
    """A valid plugin config on the tiny model with a one-record dataset; `overrides` win."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n')
    cfg = {
        "base_model": str(tiny_model_dir),
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"],
        "datasets": [{"path": str(data), "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "sequence_len": 256,
        "micro_batch_size": 1,
        "num_epochs": 1,
        "learning_rate": 1e-4,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "output_dir": str(tmp_path / "out"),
        "bf16": False,
        "fp16": False,
        "qwenvl": {},
    }
    cfg.update(overrides)
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def trainer_state(output_dir: Path) -> dict:
    """The trainer state of the newest checkpoint under `output_dir`."""
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    assert states, f"no checkpoint under {output_dir}"
    return json.loads(states[-1].read_text())

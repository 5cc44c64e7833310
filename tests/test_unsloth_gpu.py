"""The plugin's Unsloth path through `axolotl train` on a GPU (marked `gpu`: skipped on CPU CI).

    python -m pytest tests/test_unsloth_gpu.py -q        # on a CUDA machine with the unsloth extra

The tiny offline Qwen2.5-VL trains with `qwenvl.loader: unsloth`, 4-bit QLoRA, on marker records
with images (and videos where a writer is installed). It checks that:
  * the model really came from Unsloth (the plugin's log lines from FastVisionModel.get_peft_model
    and from the skipped Axolotl casts; Unsloth's own banner);
  * the loss falls on the overfit set and the adapter is written as an ordinary PEFT adapter;
  * a second `axolotl train` with more steps resumes from the last checkpoint and continues the
    step counter (Unsloth's patched Trainer keeps Axolotl's checkpoint/resume working);
  * `axolotl merge-lora` merges the Unsloth-trained adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import trainer_state
import yaml

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

UNSLOTH_LORA_LINE = "qwenvl: Unsloth FastVisionModel.get_peft_model put LoRA r=8 on 14 modules"
SKIPPED_CASTS_LINE = "Axolotl's embedding/norm casts and gradient_checkpointing_enable() are skipped"


@pytest.fixture(autouse=True)
def _needs_unsloth():
    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("needs the unsloth extra")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), root]))
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1",
               UNSLOTH_DISABLE_STATISTICS="1", PYTHONUNBUFFERED="1")  # fmt: skip
    return env


def _axolotl(*args: str, cwd: Path, timeout: int = 900) -> str:
    env = _env()
    exe = shutil.which("axolotl", path=env["PATH"])
    cmd = [exe] if exe else [sys.executable, "-m", "axolotl.cli.main"]
    cmd += list(args)
    if args[0] == "train" and not shutil.which("accelerate", path=env["PATH"]):
        cmd += ["--launcher", "python"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    (cwd / f"axolotl-{args[0]}-{len(list(cwd.glob('axolotl-*.log')))}.log").write_text(output)
    assert proc.returncode == 0, f"axolotl {' '.join(args)} failed:\n{output[-8000:]}"
    return output


def _write_video(path: Path, index: int) -> bool:
    """An 8-frame clip; False where no mp4 writer is installed (the GPU image has no PyAV)."""
    try:
        from media_factory import write_video

        write_video(path, num_frames=8, fps=4, width=64, height=48, seed=index)
        return True
    except ImportError:
        pass
    try:
        import cv2
        import numpy as np
    except ImportError:
        return False
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (64, 48))
    for frame in range(8):
        writer.write(np.full((48, 64, 3), (frame * 30 + index * 50) % 256, dtype=np.uint8))
    writer.release()
    return path.exists() and path.stat().st_size > 0


def _dataset(root: Path) -> Path:
    from media_factory import write_image

    media = root / "media"
    for i, (w, h) in enumerate([(56, 56), (84, 56), (112, 84), (140, 112)]):
        write_image(media / f"img{i}.png", w, h, seed=i)
    records = [
        {"prompt": "Describe <image_no_1>:", "completion": f" picture number {i}.", "images": [f"media/img{i}.png"]}
        for i in range(4)
    ]
    records += [
        {"messages": [{"role": "user", "content": "<image_no_1> and <image_no_2>: which is first?"},
                      {"role": "assistant", "content": f"The first is picture {i}."}],
         "images": [f"media/img{i}.png", f"media/img{i + 1}.png"]}
        for i in range(3)
    ]  # fmt: skip
    if _write_video(media / "clip.mp4", 1):
        records.append({"text": "A clip <video_no_1> showing motion.", "videos": ["media/clip.mp4"]})
        records.append({"prompt": "<video_no_1> What moves?", "completion": " The square moves.", "videos": ["media/clip.mp4"]})
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return data


def _config(root: Path, model: Path, data: Path, **overrides) -> Path:
    cfg = {
        "base_model": str(model),
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"],
        "qwenvl": {"loader": "unsloth", "image_max_pixels": 12544, "video_min_pixels": 3136,
                   "video_max_pixels": 3136},  # fmt: skip
        "datasets": [{"path": str(data), "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "dataset_prepared_path": str(root / "prepared"),
        "val_set_size": 0,
        "sequence_len": 512,
        "load_in_4bit": True,
        "adapter": "qlora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "peft_use_rslora": True,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "num_epochs": 10,
        "max_steps": 30,
        "learning_rate": 0.005,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_num_workers": 0,
        "logging_steps": 1,
        "save_steps": 10,
        "save_total_limit": 5,
        "auto_resume_from_checkpoints": True,
        "output_dir": str(root / "out"),
        "seed": 0,
    }
    cfg.update(overrides)
    path = root / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unsloth_loader_trains_resumes_and_merges(tmp_path, tiny_model_dir):
    data = _dataset(tmp_path)
    cfg = _config(tmp_path, tiny_model_dir, data)
    out = tmp_path / "out"

    log = _axolotl("train", str(cfg), cwd=tmp_path)
    assert UNSLOTH_LORA_LINE in log, "the model did not come from Unsloth's get_peft_model"
    assert "FastVisionModel.from_pretrained(" in log and SKIPPED_CASTS_LINE in log
    assert "Unsloth 20" in log  # Unsloth's own banner ("Unsloth 2026.x: Fast Qwen2_5_Vl patching")
    assert "converting PEFT model w/ prepare_model_for_kbit_training" not in log  # Axolotl's k-bit prep
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["use_rslora"] is True
    state = trainer_state(out)
    assert state["global_step"] == 30
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"loss did not fall: first 5 steps {first:.3f}, last 5 steps {last:.3f}"

    # More steps: auto_resume_from_checkpoints picks checkpoint-30 and the step counter goes on.
    cfg = _config(tmp_path, tiny_model_dir, data, max_steps=40)
    log = _axolotl("train", str(cfg), cwd=tmp_path)
    assert UNSLOTH_LORA_LINE in log
    state = trainer_state(out)
    assert state["global_step"] == 40
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == list(range(1, 41)), "the resumed run did not continue the step counter"

    log = _axolotl("merge-lora", str(cfg), cwd=tmp_path)
    merged = out / "merged"
    assert (merged / "config.json").exists()
    assert "FastVisionModel" not in log  # merging loads through Axolotl's own path

"""`axolotl preprocess` / `train` / `merge-lora` as a user runs them: real subprocesses, tiny model, CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import CPU_TRAINING_KEYS, trainer_state
from media_factory import write_image, write_video

pytestmark = pytest.mark.slow

VALID_RECORDS = 10
BAD_RECORDS = 2  # skipped under on_bad_record: skip


def axolotl_env() -> dict:
    env = dict(os.environ)
    # `axolotl train` re-launches itself through the `accelerate` script next to the interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def axolotl_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "axolotl"), *args]


def run_axolotl(*args: str, cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(
        axolotl_cmd(*args), cwd=cwd, env=axolotl_env(), capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"axolotl {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def make_dataset(root: Path) -> Path:
    """Ten learnable records with images of several sizes and two videos, plus two bad ones."""
    media = root / "media"
    sizes = [(56, 56), (84, 56), (112, 84), (140, 112)]
    for i, (w, h) in enumerate(sizes):
        write_image(media / f"img{i}.png", w, h, seed=i)
    write_video(media / "clip_a.mp4", num_frames=8, fps=4, width=64, height=48, seed=1)
    write_video(media / "clip_b.mp4", num_frames=12, fps=6, width=64, height=48, seed=2)
    records = []
    for i in range(4):
        records.append({"prompt": f"Describe <image_no_1>:", "completion": f" picture number {i}.", "images": [f"media/img{i}.png"]})
    for i in range(3):
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"<image_no_1> and <image_no_2>: which is first?"},
                    {"role": "assistant", "content": f"The first is picture {i}."},
                ],
                "images": [f"media/img{i}.png", f"media/img{i + 1}.png"],
            }
        )
    records.append({"text": "A clip <video_no_1> showing motion.", "videos": ["media/clip_a.mp4"]})
    records.append({"text": "Another clip <video_no_1> with a still.<image_no_1>", "videos": ["media/clip_b.mp4"], "images": ["media/img3.png"]})
    records.append({"prompt": "<video_no_1> What moves?", "completion": " The square moves.", "videos": ["media/clip_a.mp4"]})
    assert len(records) == VALID_RECORDS
    lines = [json.dumps(r) for r in records]
    lines.insert(3, json.dumps({"text": "missing <image_no_1>", "images": ["media/nope.png"]}))
    lines.insert(7, "{not json")
    data = root / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data


def write_config(root: Path, tiny_model_dir: Path, data: Path, **overrides) -> Path:
    cfg = {
        "base_model": str(tiny_model_dir),
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"],
        "qwenvl": {
            "loader": "transformers",
            "image_max_pixels": 12544,
            "video_fps": 2.0,
            "video_min_pixels": 3136,
            "video_max_pixels": 3136,
            "on_bad_record": "skip",
        },
        "datasets": [{"path": str(data), "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "dataset_prepared_path": str(root / "prepared"),
        "val_set_size": 0,
        "sequence_len": 512,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "num_epochs": 4,
        "learning_rate": 0.005,
        **CPU_TRAINING_KEYS,
        "output_dir": str(root / "out"),
    }
    cfg.update(overrides)
    path = root / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_preprocess_then_train_learns_and_saves_adapter(tmp_path, tiny_model_dir):
    data = make_dataset(tmp_path)
    cfg = write_config(tmp_path, tiny_model_dir, data)

    prep_log = run_axolotl("preprocess", str(cfg), cwd=tmp_path)
    assert "qwenvl: 2 of 12 record(s) skipped" in prep_log
    assert f"{data}:4: missing_file" in prep_log  # FILE:LINE of the bad records
    assert f"{data}:8: invalid_json" in prep_log
    assert list((tmp_path / "prepared").glob("qwenvl-*/*")), "preprocess wrote no cache"

    train_log = run_axolotl("train", str(cfg), cwd=tmp_path)
    # The cached preparation is reused: no record is parsed or probed again.
    assert "qwenvl: preparing" not in train_log
    assert "Loading prepared dataset from disk" in train_log
    assert f"qwenvl: training on {VALID_RECORDS} records" in train_log
    # the tiny ViT's 2 blocks got the batched window attention (tests/test_vision_attention.py)
    assert "qwenvl: vision attention batched per window size in 2 ViT blocks" in train_log
    # The end of the run says how many records were skipped and why (from preprocessing's list).
    assert "qwenvl: 2 record(s) skipped under on_bad_record: skip (preprocess: 2)" in train_log
    assert "invalid_json=1" in train_log and "missing_file=1" in train_log

    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    state = trainer_state(out)
    assert state["global_step"] == VALID_RECORDS * 4  # micro batch 1, 4 epochs: every valid record, every epoch
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    first, last = sum(losses[:VALID_RECORDS]) / VALID_RECORDS, sum(losses[-VALID_RECORDS:]) / VALID_RECORDS
    assert last < 0.7 * first, f"loss did not fall: first epoch {first:.3f}, last epoch {last:.3f}"


def test_killed_run_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    data = make_dataset(tmp_path)
    cfg = write_config(
        tmp_path, tiny_model_dir, data, num_epochs=1, max_steps=80, save_steps=5, save_total_limit=3,
        auto_resume_from_checkpoints=True, lr_scheduler="cosine",
    )
    run_axolotl("preprocess", str(cfg), cwd=tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        axolotl_cmd("train", str(cfg)), cwd=tmp_path, env=axolotl_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "training ended before writing a checkpoint"
            time.sleep(0.05)
        time.sleep(0.5)  # let the checkpoint's files finish writing
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, as a preempted machine would
        proc.wait()
    killed_at = trainer_state(out)["global_step"]
    assert 0 < killed_at < 80
    assert not (out / "adapter_model.safetensors").exists(), "the killed run must not have finished"
    last_checkpoint = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "adapter_model.safetensors"):
        assert (out / f"checkpoint-{last_checkpoint}" / name).exists(), name

    log = run_axolotl("train", str(cfg), cwd=tmp_path)
    assert re.search(r"checkpoint-\d+", log) and "resum" in log.lower()
    state = trainer_state(out)
    assert state["global_step"] == 80
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps[0] == 1 and steps == sorted(steps)
    resumed_steps = [s for s in steps if s > last_checkpoint]
    assert resumed_steps[0] == last_checkpoint + 1, "the step counter did not continue from the checkpoint"
    assert (out / "adapter_model.safetensors").exists()


def test_merge_lora_then_generate_from_image(tmp_path, tiny_model_dir):
    data = make_dataset(tmp_path)
    # Training lm_head too: the plugin gives it a 10x lower learning rate than the LoRA factors.
    cfg = write_config(tmp_path, tiny_model_dir, data, num_epochs=1, lora_modules_to_save=["lm_head"])
    run_axolotl("train", str(cfg), cwd=tmp_path)
    import torch

    optimizer = torch.load(next((tmp_path / "out").glob("checkpoint-*/optimizer.pt")), weights_only=False)
    group_lrs = sorted({round(group["lr"], 12) for group in optimizer["param_groups"] if group["params"]})
    assert len(group_lrs) == 2 and group_lrs[1] / group_lrs[0] == pytest.approx(10.0)

    run_axolotl("merge-lora", str(cfg), cwd=tmp_path)
    merged = tmp_path / "out" / "merged"
    assert (merged / "config.json").exists()

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(merged if (merged / "processor_config.json").exists() else tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(merged)
    assert not any("lora_" in name for name, _ in model.named_parameters()), "adapter was not merged"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it:"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(tmp_path / "media" / "img1.png")], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert isinstance(processor.decode(new_tokens), str)


def test_media_deleted_after_preprocess_stops_training_with_the_record_named(tmp_path, tiny_model_dir):
    media = tmp_path / "media"
    write_image(media / "kept.png", 56, 56, seed=0)
    write_image(media / "gone.png", 84, 56, seed=1)
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"text": "first <image_no_1>", "images": ["media/kept.png"]})
        + "\n"
        + json.dumps({"text": "second <image_no_1>", "images": ["media/gone.png"]})
        + "\n"
    )
    cfg = write_config(tmp_path, tiny_model_dir, data, num_epochs=1, qwenvl={"loader": "transformers", "on_bad_record": "error"})
    run_axolotl("preprocess", str(cfg), cwd=tmp_path)
    (media / "gone.png").unlink()  # unreadable between preprocess and train

    proc = subprocess.run(
        axolotl_cmd("train", str(cfg)), cwd=tmp_path, env=axolotl_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "qwenvl: stopped on a data problem:" in output
    assert f"{data}:2: missing_file:" in output
    assert "(marker <image_no_1>, path" in output and "gone.png" in output
    assert "Caught MediaError" not in output  # the worker's re-raise is unwrapped, not dumped

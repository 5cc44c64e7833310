"""Two-process DDP: real `axolotl train` runs on CPU (gloo), two ranks, the tiny model, LoRA on the
language model and the vision tower (`qwenvl.finetune_vision_layers: true`).

The data is laid out so that ranks meet media-free batches while the other rank has an image or a
video. Axolotl's sequential sampler (`curriculum_sampling: true`, `shuffle_merged_datasets: false`)
with accelerate's batch sharding gives rank r the records r, r + 2, r + 4, ... (micro batch 1):

    step   rank 0 (lines 1, 3, 5, 7)   rank 1 (lines 2, 4, 6, 8)
     1     text only                   image
     2     video                       text only
     3     text only                   text only
     4     image                       text only

Without media a batch skips the vision tower; with trainable vision LoRA the ranks then disagree on
which parameters took part in the step and DDP waits forever. The collator's placeholder image
(`qwenvl.pad_media_free_batches`, default `auto`) keeps every rank in step.

Axolotl 0.20 assumes GPUs as soon as WORLD_SIZE > 1, so a CPU multi-process run needs two shims,
loaded into every rank through a `sitecustomize` module on PYTHONPATH (`CPU_DDP_SHIM`); neither
touches training itself:
- `axolotl.utils.config.normalize_config` sets `device_map = {"": LOCAL_RANK}`, a GPU index; model
  loading then fails in transformers' `caching_allocator_warmup` with
  `RuntimeError: Found no NVIDIA driver on your system`. On CPU the shim sets `device_map: cpu`.
- `axolotl.utils.trainer.prepare_optim_env` -> `check_cuda_p2p_support` calls
  `torch.cuda.can_device_access_peer` (the same RuntimeError). Without CUDA the shim answers True.
The shim also wraps the collator of each rank to append what it collated (record locations, the
process-group rank, grids, placeholder pads) to `TRACE_DIR/rank{RANK}.jsonl`.

The launcher is Axolotl's own: `axolotl train CFG --launcher accelerate -- --multi_gpu
--num_processes 2 --main_process_port PORT` (`--cpu` would use accelerate's single-process launcher,
which starts only one process without mpirun), with `ACCELERATE_USE_CPU=true` so that the
TrainingArguments' accelerate state is a MULTI_CPU (gloo) one, and `ACCELERATE_TORCH_DEVICE=cpu`:
otherwise each rank's device is `cpu:0`, which the Trainer passes to `torch.load` as `map_location`
when it resumes, and torch refuses it ("don't know how to restore data location of
torch.storage.UntypedStorage (tagged with cpu:0)"). Records are prepared once by a
single-process `axolotl preprocess`: on CPU Axolotl's dataset preparation runs before the process
group exists, so two ranks would prepare the same cache concurrently.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import CPU_TRAINING_KEYS, trainer_state
from media_factory import write_image, write_video

pytestmark = pytest.mark.slow

RANKS = 2
RUN_TIMEOUT = 600  # seconds for a whole 2-process run (two Axolotl start-ups on a 2-core machine)
STALL_SECONDS = 60  # no batch collated and no checkpoint for this long, after step 1: a hang

RECORDS = [
    {"text": "Plain text one, nothing to see here."},
    {"text": "An image <image_no_1> of noise.", "images": ["media/square.png"]},
    {"text": "A clip <video_no_1> in motion.", "videos": ["media/clip.mp4"]},
    {"prompt": "Question: how many objects?", "completion": " Three objects."},
    {"text": "Plain text five, the quick brown fox."},
    {"text": "Plain text six, the lazy dog."},
    {"text": "Another picture <image_no_1> here.", "images": ["media/wide.png"]},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}]},
]
MEDIA_LINES = {2: "image", 3: "video", 7: "image"}  # 1-based lines of data.jsonl; the rest have no media
STEPS = math.ceil(len(RECORDS) / RANKS)  # micro batch 1, one epoch

CPU_DDP_SHIM = '''
"""Test shim for CPU multi-process `axolotl train` (see tests/test_ddp.py): patches two GPU-only
assumptions of Axolotl 0.20 and traces what each rank's collator returns."""
import importlib.abc
import json
import os
import sys


def _patch_environment(module):
    original = module.check_cuda_p2p_support

    def check_cuda_p2p_support():
        import torch

        return original() if torch.cuda.is_available() else True

    module.check_cuda_p2p_support = check_cuda_p2p_support


def _patch_config(module):
    original = module.normalize_config

    def normalize_config(cfg):
        original(cfg)
        if cfg.device == "cpu" and cfg.world_size > 1:
            cfg.device_map = "cpu"

    module.normalize_config = normalize_config


def _patch_collator(module):
    trace_dir = os.environ["QWENVL_TEST_TRACE_DIR"]
    original = module.QwenVLDataCollator.__call__

    def __call__(self, features):
        batch = original(self, features)
        import torch.distributed as dist

        image_pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        entry = {
            "group_rank": dist.get_rank() if dist.is_available() and dist.is_initialized() else None,
            "group_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else None,
            "locations": [f.get("qwenvl_location") for f in features],
            "image_grid_thw": batch["image_grid_thw"].tolist() if "image_grid_thw" in batch else None,
            "video_grid_thw": batch["video_grid_thw"].tolist() if "video_grid_thw" in batch else None,
            "masked_image_pads": int(((batch["input_ids"] == image_pad) & (batch["attention_mask"] == 0)).sum()),
        }
        path = os.path.join(trace_dir, "rank%s.jsonl" % os.environ.get("RANK", "x"))
        with open(path, "a") as out:
            out.write(json.dumps(entry) + "\\n")
        return batch

    module.QwenVLDataCollator.__call__ = __call__


PATCHES = {
    "axolotl.utils.environment": _patch_environment,
    "axolotl.utils.config": _patch_config,
    "axolotl_qwenvl_plugin.collator": _patch_collator,
}


class PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        exec_module = spec.loader.exec_module

        def patched_exec_module(module):
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = patched_exec_module
        return spec


sys.meta_path.insert(0, PatchAfterImport())
'''


# ------------------------------------------------------------------------------------ plumbing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def axolotl_env() -> dict:
    env = dict(os.environ)
    # `axolotl train` re-launches itself through the `accelerate` script next to the interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1")
    for key in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def ddp_env(shim_dir: Path, trace_dir: Path) -> dict:
    env = axolotl_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim_dir), env.get("PYTHONPATH")) if p)
    env.update(ACCELERATE_USE_CPU="true", ACCELERATE_TORCH_DEVICE="cpu", QWENVL_TEST_TRACE_DIR=str(trace_dir))
    return env


def ddp_train_cmd(cfg: Path) -> list[str]:
    axolotl = str(Path(sys.executable).parent / "axolotl")
    launcher = ["--multi_gpu", "--num_processes", str(RANKS), "--main_process_port", str(free_port())]
    return [axolotl, "train", str(cfg), "--launcher", "accelerate", "--", *launcher]


class DDPRun:
    """One `axolotl train` of two ranks, its log and the per-rank collator traces."""

    def __init__(self, root: Path, cfg: Path, name: str):
        self.dir = root / name
        self.trace_dir = self.dir / "trace"
        self.trace_dir.mkdir(parents=True)
        shim_dir = self.dir / "shim"
        shim_dir.mkdir()
        (shim_dir / "sitecustomize.py").write_text(CPU_DDP_SHIM)
        self.log_path = self.dir / "train.log"
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                ddp_train_cmd(cfg), cwd=root, env=ddp_env(shim_dir, self.trace_dir),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def trace(self, rank: int) -> list[dict]:
        path = self.trace_dir / f"rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def lines(self, rank: int) -> list[int]:
        return [int(loc.rsplit(":", 1)[1]) for entry in self.trace(rank) for loc in entry["locations"]]

    def kill(self) -> None:
        """SIGKILL the launcher's session and both ranks: torch's elastic agent starts each rank in
        a session of its own, so killing the launcher's process group alone leaves hung ranks."""
        import psutil

        if self.proc.poll() is None:
            try:
                ranks = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                ranks = []
            os.killpg(self.proc.pid, signal.SIGKILL)
            for process in ranks:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(ranks, timeout=30)
        self.proc.wait()

    def wait(self, timeout: int = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the 2-process run did not finish in {timeout}s:\n{self.log[-6000:]}")
        finally:
            self.elapsed = time.monotonic() - self.started

    def wait_ok(self) -> str:
        returncode = self.wait()
        assert returncode == 0, f"2-process axolotl train failed ({returncode}):\n{self.log[-8000:]}"
        return self.log


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory, tiny_model_dir):
    """The dataset above, prepared once by a single-process `axolotl preprocess`."""
    root = tmp_path_factory.mktemp("ddp")
    write_image(root / "media" / "square.png", 56, 56, seed=1)
    write_image(root / "media" / "wide.png", 84, 56, seed=2)
    write_video(root / "media" / "clip.mp4", num_frames=8, fps=4, width=64, height=48, seed=3)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    cfg = write_ddp_config(root, tiny_model_dir, data, "prep")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "axolotl"), "preprocess", str(cfg)],
        cwd=root, env=axolotl_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return root, data


def write_ddp_config(root: Path, tiny_model_dir: Path, data: Path, name: str, qwenvl: dict | None = None, **overrides) -> Path:
    cfg = {
        "base_model": str(tiny_model_dir),
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"],
        "qwenvl": {
            "loader": "transformers",
            "finetune_vision_layers": True,
            "image_max_pixels": 12544,
            "video_min_pixels": 3136,
            "video_max_pixels": 3136,
            **(qwenvl or {}),
        },
        "datasets": [{"path": str(data), "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "dataset_prepared_path": str(root / "prepared"),
        # Known order: no shuffling of the merged dataset, a sequential sampler.
        "shuffle_merged_datasets": False,
        "curriculum_sampling": True,
        "val_set_size": 0,
        "sequence_len": 256,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 0.01,
        **CPU_TRAINING_KEYS,
        "output_dir": str(root / name / "out"),
    }
    cfg.update(overrides)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def media_of(entry: dict) -> str | None:
    """What the batch carried before any placeholder: `image`, `video` or None."""
    if entry["video_grid_thw"]:
        return "video"
    real_images = (entry["image_grid_thw"] or [])[1 if entry["masked_image_pads"] else 0 :]
    return "image" if real_images else None


def losses(output_dir: Path) -> list[float]:
    return [e["loss"] for e in trainer_state(output_dir)["log_history"] if "loss" in e]


# ---------------------------------------------------------------------------------------- tests


def test_two_ranks_shard_the_data_and_media_free_batches_keep_ddp_in_step(ddp_data, tiny_model_dir):
    root, data = ddp_data
    cfg = write_ddp_config(root, tiny_model_dir, data, "auto", save_steps=STEPS)
    run = DDPRun(root, cfg, "auto")
    log = run.wait_ok()
    print(f"2-process run: {run.elapsed:.0f}s")

    # Each rank collated its own shard, rank r the lines r+1, r+3, ...: together every record once.
    assert run.lines(0) == [1, 3, 5, 7]
    assert run.lines(1) == [2, 4, 6, 8]
    for rank in range(RANKS):
        # A real gloo process group of two, seen from inside the collator.
        assert {(e["group_rank"], e["group_size"]) for e in run.trace(rank)} == {(rank, RANKS)}
        for entry in run.trace(rank):
            (location,) = entry["locations"]
            line = int(location.rsplit(":", 1)[1])
            assert media_of(entry) == MEDIA_LINES.get(line), location
            # A placeholder exactly on the batches without media: one masked image token, grid 1x2x2.
            if line in MEDIA_LINES:
                assert entry["masked_image_pads"] == 0, location
            else:
                assert entry["masked_image_pads"] == 1 and entry["image_grid_thw"] == [[1, 2, 2]], location
    # The steps the data was laid out for: one rank without media while the other has an image
    # (step 1), a video (step 2).
    assert [media_of(e) for e in run.trace(0)[:2]] == [None, "video"]
    assert [media_of(e) for e in run.trace(1)[:2]] == ["image", None]

    out = root / "auto" / "out"
    state = trainer_state(out)
    assert state["global_step"] == STEPS == len(RECORDS) // RANKS
    assert all(math.isfinite(loss) for loss in losses(out)) and len(losses(out)) == STEPS
    assert '"world_size": 2' in log
    assert "Loading prepared dataset from disk" in log  # both ranks read the single-process cache
    assert (out / "adapter_model.safetensors").exists()

    # The vision LoRA trained (its B factors start at zero and only move with vision gradients).
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    vision_b = [w for name, w in weights.items() if ".visual." in name and "lora_B" in name]
    language_b = [w for name, w in weights.items() if ".visual." not in name and "lora_B" in name]
    assert vision_b and language_b
    assert all(w.abs().sum() > 0 for w in vision_b + language_b)


def test_without_the_placeholder_ddp_hangs(ddp_data, tiny_model_dir):
    """`pad_media_free_batches: never`: at step 1 rank 0 has no media, its vision LoRA gets no
    gradient, and the two ranks' gradient all-reduces no longer match: no rank ever finishes."""
    root, data = ddp_data
    cfg = write_ddp_config(root, tiny_model_dir, data, "never", qwenvl={"pad_media_free_batches": "never"})
    run = DDPRun(root, cfg, "never")
    out = root / "never" / "out"
    progress, last_change = None, time.monotonic()
    try:
        while time.monotonic() - run.started < RUN_TIMEOUT:
            if run.proc.poll() is not None:
                break
            now = (len(run.trace(0)), len(run.trace(1)), len(list(out.glob("checkpoint-*"))))
            if now != progress:
                progress, last_change = now, time.monotonic()
            # Two batches collated on each rank: both are in step 1 or later (the loader collates
            # one batch ahead). With the placeholder a step takes under a second here.
            in_training = min(now[:2]) >= 2
            if in_training and time.monotonic() - last_change > STALL_SECONDS:
                break
            time.sleep(1)
        hung = run.proc.poll() is None
    finally:
        run.kill()
    log = run.log
    first = run.trace(0)[:1]
    assert first and first[0]["masked_image_pads"] == 0 and first[0]["image_grid_thw"] is None, (
        "qwenvl.pad_media_free_batches: never did not reach the collator (the plugin's "
        f"get_collator_cls_and_kwargs must pass it): {first}"
    )
    assert run.lines(0)[:1] == [1] and run.lines(1)[:1] == [2]
    assert not (out / "adapter_model.safetensors").exists(), "the run finished without the placeholder"
    if hung:
        # Stuck in step 1 or 2 (one batch of look-ahead): no rank got further, nothing was saved.
        assert len(run.trace(0)) <= 3 and len(run.trace(1)) <= 3, (run.lines(0), run.lines(1))
        assert not list(out.glob("checkpoint-*"))
    else:
        assert run.proc.returncode != 0
        assert "Expected to have finished reduction" in log or "unused" in log.lower(), log[-6000:]


def test_two_rank_checkpoint_then_resume(ddp_data, tiny_model_dir):
    """Stop at step 2 with a checkpoint, then train on to step 4 from it: each rank resumes at its
    own next record, and the per-rank RNG states are saved and restored."""
    root, data = ddp_data
    common = dict(save_steps=2, auto_resume_from_checkpoints=True)
    first = DDPRun(root, write_ddp_config(root, tiny_model_dir, data, "resume", max_steps=2, **common), "resume-1")
    first.wait_ok()
    out = root / "resume" / "out"
    checkpoint = out / "checkpoint-2"
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "adapter_model.safetensors", "rng_state_0.pth", "rng_state_1.pth"):
        assert (checkpoint / name).exists(), name
    # Accelerate's loader collates one batch ahead, so a rank may also have collated its step-3 batch.
    assert first.lines(0)[:2] == [1, 3] and first.lines(1)[:2] == [2, 4]

    second = DDPRun(root, write_ddp_config(root, tiny_model_dir, data, "resume", max_steps=4, **common), "resume-2")
    log = second.wait_ok()
    print(f"2-process runs: {first.elapsed:.0f}s + {second.elapsed:.0f}s")
    assert "checkpoint-2" in log and "resum" in log.lower()
    # The sharded data position was restored: the skipped batches are not collated again.
    assert second.lines(0) == [5, 7] and second.lines(1) == [6, 8]
    state = trainer_state(out)
    assert state["global_step"] == 4
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4]
    assert all(math.isfinite(loss) for loss in losses(out))
    for name in ("rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"):
        assert (out / "checkpoint-4" / name).exists(), name

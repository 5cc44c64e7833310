"""One throughput and memory meter for every training path of the issue-5 benchmark.

* `StepMeter`: a transformers `TrainerCallback`. Per optimizer step it records the wall time since
  the previous step ended (so data loading, logging and the optimizer are included; the first
  interval is timed from `on_step_begin`), the tokens the step trained on and the losses logged.
  `step_seconds` is the part between `on_step_begin` and `on_step_end` (forward, backward,
  optimizer), so the rest of an interval is data loading, callbacks and logging.
  Tokens are counted by wrapping `trainer.training_step`: `attention_mask.sum()` of each
  micro-batch, i.e. text tokens plus vision tokens (the `<|image_pad|>` / `<|video_pad|>`
  positions the LLM runs over), padding excluded; vision tokens are also counted apart.
  Memory: `torch.cuda.max_memory_allocated()` over the whole process (loading included) and over
  training only (peak stats reset at `on_train_begin`).
  Each step also records its own peak (`peak_allocated_gib`), to find which step a spike is in.
  It rewrites a JSON file after every step, so a killed run still leaves its numbers.
* `$QWENVL_BENCH_PROFILE=START:END` profiles global steps START..END with `torch.profiler` and
  writes `<meter>-profile.json` (GPU busy share of the wall time, kernel time by kind, the top
  kernels and host ops) and `<meter>-profile.log` (the same tables as text): what holds MFU back.
* `ThroughputPlugin`: an Axolotl plugin that attaches the meter to Axolotl's trainer:

      plugins:
        - axolotl_qwenvl_plugin.QwenVLPlugin
        - benchmarks.throughput.ThroughputPlugin     # needs the repo root on PYTHONPATH

  The JSON goes to `$QWENVL_BENCH_JSON` (default `<output_dir>/throughput.json`).

Axolotl's own `tokens/train_per_sec_per_gpu` counts only tokens with a label (labels != -100) over
the interval between two logs, so it leaves out vision tokens and prompt tokens: it is not used here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

GIB = 1024**3


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepMeter(TrainerCallback):
    def __init__(self, out_path: str | Path, label: str = "", image_token_id: int | None = None,
                 video_token_id: int | None = None):  # fmt: skip
        self.out_path = Path(out_path)
        self.label = label
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.pending_tokens = 0
        self.pending_vision = 0
        self.pending_micro_batches = 0
        self.steps: list[dict] = []
        self.losses: list[dict] = []
        self.saves: list[int] = []
        self.load_peak_gib = None
        self._last_end = None
        self._start_wall = time.time()
        self.train_peak_gib = 0.0
        self.profile_window = profile_window(os.environ.get("QWENVL_BENCH_PROFILE", ""))
        self._profiler = None

    # -- token counting -------------------------------------------------------------------------
    def count(self, inputs) -> None:
        mask = inputs.get("attention_mask")
        ids = inputs.get("input_ids")
        if mask is not None:
            self.pending_tokens += int(mask.sum())
        elif ids is not None:
            self.pending_tokens += int(ids.numel())
        if ids is not None:
            for token_id in (self.image_token_id, self.video_token_id):
                if token_id is not None:
                    self.pending_vision += int((ids == token_id).sum())
        self.pending_micro_batches += 1

    def wrap(self, trainer) -> None:
        """Count the tokens of every micro-batch the trainer trains on."""
        original = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):
            self.count(inputs)
            return original(model, inputs, *args, **kwargs)

        trainer.training_step = training_step
        self.trainer = trainer

    # -- callbacks ------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        try:
            fingerprint = training_fingerprint(getattr(self, "trainer", None), model, args)
        except Exception as err:  # diagnostics must never stop a run
            fingerprint = {"error": repr(err)}
        self.out_path.with_name(self.out_path.stem + "-fingerprint.json").write_text(
            json.dumps(fingerprint, indent=1, default=str)
        )

        if torch.cuda.is_available():
            self.load_peak_gib = torch.cuda.max_memory_allocated() / GIB
            torch.cuda.reset_peak_memory_stats()
        self.first_step = state.global_step + 1
        self._write(state)

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        if self.profile_window and state.global_step + 1 == self.profile_window[0]:
            self._start_profiler()
        self._begin = time.perf_counter()
        if self._last_end is None:
            self._last_end = self._begin

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        _sync()
        now = time.perf_counter()
        step_peak = None
        if torch.cuda.is_available():
            step_peak = torch.cuda.max_memory_allocated() / GIB
            self.train_peak_gib = max(self.train_peak_gib, step_peak)
            torch.cuda.reset_peak_memory_stats()
        self.steps.append({
            "step": state.global_step,
            "seconds": now - self._last_end,
            # forward + backward + optimizer; the rest of `seconds` is data loading, callbacks, logging
            "step_seconds": now - self._begin,
            "tokens": self.pending_tokens,
            "vision_tokens": self.pending_vision,
            "micro_batches": self.pending_micro_batches,
            "peak_allocated_gib": step_peak,
            "profiled": self._profiler is not None,  # slower: left out of steady_state
        })  # fmt: skip
        if self._profiler is not None and state.global_step >= self.profile_window[1]:
            self._stop_profiler(now - self._profile_start, state.global_step - self.profile_window[0] + 1)
            now = time.perf_counter()  # the profile summary is not training time
        self._last_end = now
        self.pending_tokens = self.pending_vision = self.pending_micro_batches = 0
        self._write(state)

    # -- profiling ------------------------------------------------------------------------------
    def _start_profiler(self) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()
        self._profile_start = time.perf_counter()

    def _stop_profiler(self, wall_seconds: float, steps: int) -> None:
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        stem = self.out_path.with_name(self.out_path.stem + "-profile")
        try:
            summary, text = profile_summary(profiler, wall_seconds, steps)
        except Exception as err:  # diagnostics must never stop a run
            summary, text = {"error": repr(err)}, repr(err)
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
        stem.with_suffix(".log").write_text(text)

    def on_save(self, args, state, control, **kwargs):
        self.saves.append(state.global_step)
        self._last_end = None  # the save is not training time: restart the clock at the next step
        self._write(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append({"step": state.global_step, "loss": float(logs["loss"])})

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, finished=True)

    # -- output ---------------------------------------------------------------------------------
    def _write(self, state, finished: bool = False) -> None:
        import torch

        cuda = torch.cuda.is_available()
        payload = {
            "label": self.label,
            "finished": finished,
            "global_step": state.global_step,
            "first_step": getattr(self, "first_step", None),
            "steps": self.steps,
            "losses": self.losses,
            "saves": self.saves,
            "load_peak_allocated_gib": self.load_peak_gib,
            "train_peak_allocated_gib": (max(self.train_peak_gib, torch.cuda.max_memory_allocated() / GIB)
                                         if cuda else None),
            "train_peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "wall_seconds_since_meter": time.time() - self._start_wall,
        }
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(self.out_path)


def profile_window(value: str) -> tuple[int, int] | None:
    """`START:END` (or `STEP`) -> the inclusive range of global steps to profile."""
    if not value.strip():
        return None
    start, _, end = value.partition(":")
    first = int(start)
    return first, int(end or first)


# Kernel kinds, by substrings of the CUDA kernel name (first match wins).
KERNEL_KINDS = (
    ("4-bit dequantize (bitsandbytes)", ("dequantize", "kDequant", "kgemm_4bit")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("matmul (cuBLAS/CUTLASS)", ("gemm", "sm90_xmma", "cutlass", "nvjet", "wgmma", "ampere_", "sm80_")),
    ("copy / memset", ("memcpy", "memset", "Memcpy", "Memset", "copy_kernel", "CatArrayBatched")),
    ("triton (compiled / Unsloth)", ("triton",)),
    ("reduction", ("reduce_kernel", "Reduce")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def kernel_kind(name: str) -> str:
    for kind, needles in KERNEL_KINDS:
        if any(needle in name for needle in needles):
            return kind
    return "other"


def _busy_seconds(intervals: list[tuple[int, int]]) -> float:
    """Length of the union of [start, end) nanosecond intervals, in seconds."""
    busy, current_start, current_end = 0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        busy += current_end - current_start
    return busy / 1e9


def profile_summary(profiler, wall_seconds: float, steps: int, top: int = 25) -> tuple[dict, str]:
    """GPU busy share and where the GPU and the host spend a profiled window."""
    import collections

    from torch.autograd import DeviceType

    kernels, by_kind, by_name, counts = [], collections.Counter(), collections.Counter(), collections.Counter()
    for event in profiler.profiler.kineto_results.events():
        if event.device_type() != DeviceType.CUDA:
            continue
        start, duration = event.start_ns(), event.duration_ns()
        kernels.append((start, start + duration))
        name = event.name()
        by_kind[kernel_kind(name)] += duration / 1e9
        by_name[name[:160]] += duration / 1e9
        counts[name[:160]] += 1
    busy = _busy_seconds(kernels)
    summary = {
        "steps": steps,
        "wall_seconds": wall_seconds,
        "gpu_busy_seconds": busy,
        "gpu_busy_share": busy / wall_seconds if wall_seconds else None,
        "kernels": len(kernels),
        "kernels_per_step": len(kernels) / steps if steps else None,
        "kernel_seconds_by_kind": dict(by_kind.most_common()),
        "top_kernels": [{"name": n, "seconds": t, "calls": counts[n]} for n, t in by_name.most_common(top)],
    }
    averages = profiler.key_averages()
    host = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    summary["top_host_ops"] = [{"name": e.key, "self_cpu_seconds": e.self_cpu_time_total / 1e6, "calls": e.count}
                               for e in host]  # fmt: skip
    text = "\n\n".join([
        json.dumps({k: v for k, v in summary.items() if not k.startswith("top_")}, indent=1),
        averages.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90),
        averages.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=90),
    ])  # fmt: skip
    return summary, text


def _fn(obj) -> str:
    obj = getattr(obj, "__func__", obj)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def training_fingerprint(trainer, model, args) -> dict:
    """What decides speed in an Unsloth run, to diff two runs: which trainer methods and forwards
    are active (Unsloth's patched ones or not), checkpointing functions, dtypes, env switches."""
    import collections
    import sys

    import torch

    out: dict = {}
    if trainer is not None:
        cls = type(trainer)
        out["trainer_mro"] = [c.__name__ for c in cls.__mro__[:12]]
        for name in ("training_step", "compute_loss", "_inner_training_loop", "train", "create_optimizer",
                     "get_train_dataloader", "log"):  # fmt: skip
            out[f"trainer.{name}"] = _fn(getattr(cls, name, None))
        out["trainer.model_accepts_loss_kwargs"] = getattr(trainer, "model_accepts_loss_kwargs", None)
        out["trainer.optimizer"] = type(getattr(trainer, "optimizer", None)).__name__
        out["callbacks"] = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        acc = getattr(trainer, "accelerator", None)
        if acc is not None:
            out["accelerator.mixed_precision"] = acc.mixed_precision
            out["accelerator.non_blocking"] = getattr(getattr(acc, "dataloader_config", None), "non_blocking", None)
    keys = ("gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16", "tf32", "optim",
            "torch_compile", "max_grad_norm", "dataloader_num_workers", "dataloader_pin_memory",
            "dataloader_prefetch_factor", "average_tokens_across_devices", "include_tkps",
            "include_num_input_tokens_seen", "torch_empty_cache_steps", "group_by_length", "eval_strategy",
            "logging_steps", "save_strategy", "ddp_find_unused_parameters", "label_smoothing_factor",
            "loss_type", "padding_free", "use_liger_kernel", "neftune_noise_alpha")  # fmt: skip
    out["args"] = {k: getattr(args, k, "<absent>") for k in keys}
    if model is not None:
        out["model_type"] = type(model).__name__
        mods = dict(model.named_modules())
        def first(suffix):
            return next(((n, m) for n, m in mods.items() if n.endswith(suffix)), (None, None))
        for suffix in ("language_model.layers.0", "language_model.layers.0.self_attn",
                       "language_model.layers.0.mlp", "language_model.layers.0.self_attn.q_proj",
                       "language_model.layers.0.mlp.down_proj", "language_model.layers.0.input_layernorm",
                       "language_model", "visual", "lm_head", "visual.blocks.0"):  # fmt: skip
            name, module = first(suffix)
            if module is None:
                continue
            info = {"name": name, "class": f"{type(module).__module__}.{type(module).__qualname__}",
                    "forward": _fn(type(module).forward),
                    "instance_forward": _fn(module.__dict__["forward"]) if "forward" in module.__dict__ else None,
                    "training": module.training}  # fmt: skip
            for attr in ("gradient_checkpointing", "_gradient_checkpointing_func", "_attn_implementation"):
                if attr in module.__dict__ or hasattr(module, attr):
                    info[attr] = repr(getattr(module, attr, None))[:200]
            params = list(module.parameters(recurse=False))
            info["param_dtypes"] = sorted({str(p.dtype) for p in params})
            out[f"module:{suffix}"] = info
        dtypes = collections.Counter()
        trainable = collections.Counter()
        for p in model.parameters():
            dtypes[str(p.dtype)] += p.numel()
            if p.requires_grad:
                trainable[str(p.dtype)] += p.numel()
        out["param_numel_by_dtype"] = dict(dtypes)
        out["trainable_numel_by_dtype"] = dict(trainable)
        config = getattr(model, "config", None)
        out["config._attn_implementation"] = getattr(config, "_attn_implementation", None)
        out["config.use_cache"] = getattr(config, "use_cache", None)
        base = model
        for _ in range(4):
            base = getattr(base, "model", None) or getattr(base, "base_model", None) or base
        out["is_gradient_checkpointing"] = getattr(model, "is_gradient_checkpointing", None)
        out["_unsloth_gradient_checkpointing"] = repr(getattr(model, "_unsloth_gradient_checkpointing", None))
        loss_fn = getattr(model, "loss_function", None)
        out["loss_function"] = _fn(loss_fn) if loss_fn is not None else None
        out["model.forward"] = _fn(type(model).forward)
    out["env"] = {k: v for k, v in os.environ.items() if k.startswith(("UNSLOTH", "TORCH", "PYTORCH", "ACCELERATE", "CUDA"))}
    out["torch.backends"] = {"matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                             "float32_matmul_precision": torch.get_float32_matmul_precision(),
                             "bf16_reduced": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}  # fmt: skip
    out["torch.utils.checkpoint.checkpoint"] = _fn(torch.utils.checkpoint.checkpoint)
    try:
        import transformers.modeling_utils as mu

        out["transformers.modeling_utils.checkpoint"] = _fn(getattr(mu, "checkpoint", None))
    except Exception:
        pass
    out["compiled_cache_modules"] = sorted(m for m in sys.modules if "unsloth_compiled" in m)[:40]
    out["threads"] = torch.get_num_threads()
    return out


def steady_state(payload: dict, skip: int = 3) -> dict:
    """Tokens/s over the steps of one run after its first `skip` steps (compilation, autotuning,
    allocator warm-up) and leaving out the step timed across a checkpoint save."""
    steps = payload["steps"][skip:]
    steps = [s for s in steps if s["tokens"] > 0 and not s.get("profiled")]
    seconds = sum(s["seconds"] for s in steps)
    step_seconds = sum(s.get("step_seconds", 0.0) for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    vision = sum(s["vision_tokens"] for s in steps)
    return {
        "steps": len(steps),
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "micro_batches": sum(s["micro_batches"] for s in steps),
        "vision_share": vision / tokens if tokens else None,
        "seconds_per_step_median": sorted(s["seconds"] for s in steps)[len(steps) // 2] if steps else None,
        # share of the wall time spent between on_step_begin and on_step_end (the rest: data, logging)
        "in_step_share": step_seconds / seconds if seconds else None,
    }


try:  # the Axolotl plugin (only where Axolotl is installed)
    from axolotl.integrations.base import BasePlugin
except ImportError:  # pragma: no cover
    BasePlugin = object


class ThroughputPlugin(BasePlugin):
    """Attach `StepMeter` to Axolotl's trainer (benchmarks only)."""

    def add_callbacks_post_trainer(self, cfg, trainer):
        tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        ids = {}
        if tokenizer is not None:
            ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
                   (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}  # fmt: skip
        out = os.environ.get("QWENVL_BENCH_JSON") or str(Path(cfg.output_dir) / "throughput.json")
        rank = int(os.environ.get("RANK") or 0)
        if rank:  # under DDP every rank meters its own micro-batches: one file each
            out = str(Path(out).with_suffix(f".rank{rank}.json"))
        meter = StepMeter(out, label=os.environ.get("QWENVL_BENCH_LABEL", ""), **ids)
        meter.wrap(trainer)
        return [meter]

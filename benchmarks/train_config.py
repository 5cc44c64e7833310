"""Write the Axolotl config of one GPU benchmark run (the same hyper-parameters for every path).

    python benchmarks/train_config.py --path plugin|native [--loader unsloth|transformers] \
        --model DIR --data FILE --run-dir DIR [--batch 2] [--max-steps 36] [--save-steps 12] > DIR/cfg.yml

QLoRA: 4-bit base, LoRA r16 / alpha 16 with rslora on the language layers' attention and MLP
projections, bf16, gradient checkpointing (non-reentrant), constant LR after a 2-step warm-up,
8-bit AdamW, a checkpoint every `save_steps`, auto-resume. The same values are hard-wired in
benchmarks/unsloth_standalone.py.

* `--path plugin`: this plugin (`qwenvl.loader` from `--loader`) on marker JSONL. The DataLoader
  keys are left to the plugin's defaults unless `--workers` is given, so the defaults are measured.
* `--path native`: Axolotl's own multimodal QLoRA, no plugin: `chat_template: qwen2_vl`,
  `processor_type: AutoProcessor`, content-list records (`native.jsonl` of
  benchmarks/make_gpu_dataset.py, images only), `skip_prepare_dataset`, LoRA on the same
  language-model projections (a regex, as Axolotl's multimodal docs recommend), Axolotl's
  defaults otherwise (except its LoRA kernels, which fail to load on Qwen2.5-VL).
"""

from __future__ import annotations

import argparse
import sys

import yaml

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NATIVE_TARGETS = r"model.language_model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj"


def config(path: str, loader: str, model: str, data: str, run_dir: str, max_steps: int, save_steps: int,
           batch: int = 2, workers: int | None = None, group_by_length: bool = False,
           meter: bool = True, cpu: bool = False, checkpointing: str = "unsloth") -> dict:  # fmt: skip
    plugins = ["axolotl_qwenvl_plugin.QwenVLPlugin"] if path == "plugin" else []
    cfg = {
        "base_model": model,
        "plugins": plugins + (["benchmarks.throughput.ThroughputPlugin"] if meter else []),
        "datasets": [{"path": data, "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "dataset_prepared_path": f"{run_dir}/prepared",
        "val_set_size": 0,
        "sequence_len": 4096,
        "load_in_4bit": True,
        "adapter": "qlora",
        "lora_r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": TARGETS,
        "peft_use_rslora": True,
        "micro_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "num_epochs": 100,  # max_steps ends the run; the overfit set is cycled
        "max_steps": max_steps,
        "optimizer": "adamw_8bit",
        "learning_rate": 1e-3,
        "lr_scheduler": "constant_with_warmup",
        "warmup_steps": 2,
        "weight_decay": 0.0,
        "bf16": True,
        "tf32": True,
        "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "logging_steps": 1,
        "save_steps": save_steps,
        "save_total_limit": 4,
        "auto_resume_from_checkpoints": True,
        "output_dir": f"{run_dir}/out",
        "seed": 42,
    }
    if group_by_length:
        cfg["group_by_length"] = True
    if checkpointing == "false":
        cfg["gradient_checkpointing"] = False
        cfg.pop("gradient_checkpointing_kwargs")
    if path == "plugin":
        cfg["qwenvl"] = {
            "loader": loader,
            "video_fps": 2.0,
            "finetune_vision_layers": False,
            "finetune_language_layers": True,
            "finetune_attention_modules": True,
            "finetune_mlp_modules": True,
        }
        if checkpointing != "unsloth":  # "true": on-GPU checkpoints, "false": none (Unsloth's mode)
            cfg["qwenvl"]["use_gradient_checkpointing"] = checkpointing == "true"
    else:
        cfg.update(
            processor_type="AutoProcessor",
            chat_template="qwen2_vl",
            skip_prepare_dataset=True,
            remove_unused_columns=False,
            sample_packing=False,
            datasets=[{"path": data, "type": "chat_template", "field_messages": "messages", "ds_type": "json"}],
            lora_target_modules=NATIVE_TARGETS,
        )
    if workers is not None or path == "native":
        workers = 4 if workers is None else workers
        cfg.update(dataloader_num_workers=workers, dataloader_prefetch_factor=2 if workers else None,
                   dataloader_pin_memory=True)  # fmt: skip
    if path == "native" or loader == "transformers":
        # Axolotl 0.20 turns its Triton LoRA kernels on for lora/qlora, and they fail to load on
        # Qwen2.5-VL ("could not import attention class for model_type: qwen2_5_vl"): keep them off.
        cfg.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    if cpu:  # a dry run of the same pipeline on CPU with the tiny model (no bitsandbytes, no bf16)
        cfg.update(load_in_4bit=False, adapter="lora", bf16=False, tf32=False, optimizer="adamw_torch",
                   dataloader_num_workers=0, dataloader_prefetch_factor=None, dataloader_pin_memory=False,
                   lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)  # fmt: skip
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("plugin", "native"), default="plugin")
    parser.add_argument("--loader", choices=("unsloth", "transformers", "auto"), default="unsloth")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=36)
    parser.add_argument("--save-steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the plugin's)")
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--no-meter", action="store_true")
    parser.add_argument("--checkpointing", choices=("unsloth", "true", "false"), default="unsloth",
                        help="gradient checkpointing: Unsloth's offloaded (default), on-GPU, or none")
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU (tiny model)")
    args = parser.parse_args(argv)
    cfg = config(args.path, args.loader, args.model, args.data, args.run_dir, args.max_steps, args.save_steps,
                 batch=args.batch, workers=args.workers, group_by_length=args.group_by_length,
                 meter=not args.no_meter, cpu=args.cpu, checkpointing=args.checkpointing)  # fmt: skip
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

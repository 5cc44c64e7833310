"""Write the Axolotl config of one issue-5 GPU run (the same hyper-parameters for every path).

    python benchmarks/issue5_config.py --loader unsloth|transformers --model DIR --data FILE \
        --run-dir DIR [--max-steps 36] [--save-steps 12] > DIR/cfg.yml

QLoRA: 4-bit base, LoRA r16 / alpha 16 with rslora on the language layers' attention and MLP
projections, bf16, gradient checkpointing (non-reentrant), micro batch 2, constant LR after a
2-step warm-up, 8-bit AdamW, a checkpoint every `save_steps`, auto-resume. The same values are
hard-wired in benchmarks/unsloth_standalone.py.
"""

from __future__ import annotations

import argparse
import sys

import yaml

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config(loader: str, model: str, data: str, run_dir: str, max_steps: int, save_steps: int,
           meter: bool = True, cpu: bool = False) -> dict:  # fmt: skip
    cfg = {
        "base_model": model,
        "plugins": ["axolotl_qwenvl_plugin.QwenVLPlugin"]
        + (["benchmarks.throughput.ThroughputPlugin"] if meter else []),
        "qwenvl": {
            "loader": loader,
            "video_fps": 2.0,
            "finetune_vision_layers": False,
            "finetune_language_layers": True,
            "finetune_attention_modules": True,
            "finetune_mlp_modules": True,
        },
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
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
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
        "dataloader_num_workers": 4,
        "dataloader_prefetch_factor": 2,
        "dataloader_pin_memory": True,
        "logging_steps": 1,
        "save_steps": save_steps,
        "save_total_limit": 4,
        "auto_resume_from_checkpoints": True,
        "output_dir": f"{run_dir}/out",
        "seed": 42,
    }
    if loader == "transformers":
        # The plain transformers + bitsandbytes + PEFT reference path: Axolotl's Triton LoRA kernels
        # (auto-enabled for lora/qlora) off, so it is the recipe the reference row measured.
        cfg.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    if cpu:  # a dry run of the same pipeline on CPU with the tiny model (no bitsandbytes, no bf16)
        cfg.update(load_in_4bit=False, adapter="lora", bf16=False, tf32=False, optimizer="adamw_torch",
                   dataloader_num_workers=0, dataloader_prefetch_factor=None, dataloader_pin_memory=False,
                   lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)  # fmt: skip
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loader", choices=("unsloth", "transformers", "auto"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=36)
    parser.add_argument("--save-steps", type=int, default=12)
    parser.add_argument("--no-meter", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU (tiny model)")
    args = parser.parse_args(argv)
    cfg = config(args.loader, args.model, args.data, args.run_dir, args.max_steps, args.save_steps,
                 meter=not args.no_meter, cpu=args.cpu)  # fmt: skip
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

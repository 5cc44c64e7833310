"""Standalone Unsloth baseline for issue 5: the seed's recipe without Axolotl, on the same model,
data and hyper-parameters as the plugin's `axolotl train` runs (GPU only).

    python benchmarks/unsloth_standalone.py --model /tmp/qwen3b --data DATA/train.jsonl \
        --out RUN_DIR [--steps 24] [--trainer sft|hf]

Unsloth is imported first, before transformers, as Unsloth asks. Then:
FastVisionModel.from_pretrained (4-bit, "unsloth" offloaded checkpointing) ->
FastVisionModel.get_peft_model (r16, rslora, language layers, attention + MLP) -> records prepared
by the plugin's RecordBuilder and batched by its QwenVLDataCollator (the same batches Axolotl
feeds) -> TRL's SFTTrainer with `skip_prepare_dataset` as in Unsloth's vision notebooks (or
transformers' Trainer with `--trainer hf`). Tokens/s and peak memory come from the same
`benchmarks.throughput.StepMeter` the Axolotl runs use.
"""

from __future__ import annotations

import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

if "--late-import" in sys.argv:
    # The import order an Axolotl plugin gets: transformers, PEFT and TRL are already imported
    # (axolotl.cli.config imports them before any plugin) when Unsloth is imported.
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from transformers import Trainer  # noqa: F401

import unsloth  # noqa: E402,F401  first: Unsloth patches transformers/TRL/PEFT on import
from unsloth import FastVisionModel  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="marker JSONL (benchmarks/make_gpu_dataset.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--sequence-len", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--trainer", choices=("sft", "hf"), default="sft")
    parser.add_argument("--checkpointing", choices=("unsloth", "true", "false"), default="unsloth",
                        help="gradient checkpointing: Unsloth's offloaded (default), on-GPU, or none")
    parser.add_argument("--late-import", action="store_true",
                        help="import transformers, PEFT and TRL before Unsloth (as inside Axolotl)")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoProcessor

    from axolotl_qwenvl_plugin.args import QwenVLConfig
    from axolotl_qwenvl_plugin.collator import QwenVLDataCollator
    from axolotl_qwenvl_plugin.records import RecordBuilder
    from benchmarks.throughput import StepMeter, steady_state

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[args.checkpointing]
    model, _unsloth_processor = FastVisionModel.from_pretrained(
        args.model,
        load_in_4bit=True,
        max_seq_length=args.sequence_len,
        use_gradient_checkpointing=checkpointing,
        dtype=None,
        use_exact_model_name=True,
        local_files_only=True,
    )
    model = FastVisionModel.get_peft_model(
        model,
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        target_modules=TARGETS,
        finetune_vision_layers=False,
        finetune_language_layers=True,
        finetune_attention_modules=True,
        finetune_mlp_modules=True,
        use_rslora=True,
        random_state=args.seed,
        use_gradient_checkpointing=checkpointing,
    )
    FastVisionModel.for_training(model)

    # The plugin's preparation and collator: the very batches the Axolotl runs train on.
    processor = AutoProcessor.from_pretrained(args.model)
    data = Path(args.data).resolve()
    builder = RecordBuilder(processor.tokenizer, processor, QwenVLConfig(video_fps=2.0),
                            media_dir=data.parent, sequence_len=args.sequence_len)  # fmt: skip
    rows = []
    for index, line in enumerate(data.read_text().splitlines()):
        row = builder.build_line(line, f"{data}:{index + 1}")
        if row.pop("qwenvl_error", ""):
            raise SystemExit(f"{data}:{index + 1} failed to prepare")
        rows.append(row)
    dataset = Dataset.from_list(rows)
    collator = QwenVLDataCollator(processor.tokenizer, processor_source=args.model)

    common = dict(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup_steps,
        optim="adamw_8bit",
        weight_decay=0.0,
        bf16=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        remove_unused_columns=False,
        dataloader_num_workers=args.workers,
        dataloader_prefetch_factor=2 if args.workers else None,
        gradient_checkpointing=bool(checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )
    used = args.trainer
    trainer = None
    if args.trainer == "sft":
        try:
            from trl import SFTConfig, SFTTrainer

            config = SFTConfig(**common, dataset_text_field="", max_length=args.sequence_len,
                               dataset_kwargs={"skip_prepare_dataset": True})  # fmt: skip
            trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                                 data_collator=collator, processing_class=processor)  # fmt: skip
        except Exception as err:  # keep the baseline alive; say which trainer measured it
            print(f"unsloth_standalone: SFTTrainer failed ({type(err).__name__}: {err}); using Trainer")
            used = "hf (SFTTrainer failed)"
    if trainer is None:
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset,
                          data_collator=collator)  # fmt: skip

    meter = StepMeter(out / "throughput.json", label=f"standalone-{used}",
                      image_token_id=processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                      video_token_id=processor.tokenizer.convert_tokens_to_ids("<|video_pad|>"))  # fmt: skip
    meter.wrap(trainer)
    trainer.add_callback(meter)
    trainer.train()
    trainer.state.save_to_json(str(out / "trainer_state.json"))

    payload = json.loads((out / "throughput.json").read_text())
    summary = {"trainer": used, "late_import": args.late_import, "torch": torch.__version__,
               "unsloth": unsloth.__version__,
               **steady_state(payload),
               "peak_allocated_gib": max(filter(None, [payload["load_peak_allocated_gib"],
                                                       payload["train_peak_allocated_gib"]])),
               "losses": [entry["loss"] for entry in payload["losses"]]}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("unsloth_standalone:", json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Summarise the issue-5 GPU runs written by benchmarks/gpu_issue5.sh into one table + JSON.

    python benchmarks/summarize_issue5.py WORK_DIR [--json OUT.json] [--md OUT.md]

WORK_DIR holds one folder per path: `unsloth`, `transformers`, `unsloth_early` (Axolotl runs:
cfg.yml, meter-*.json, train-*.log, out/) and `standalone` (summary.json, throughput.json).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import steady_state  # noqa: E402

UNSLOTH_LINE = "qwenvl: Unsloth FastVisionModel.get_peft_model put LoRA"


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _peak(meters: list[dict]) -> float | None:
    values = [m.get(k) for m in meters for k in ("load_peak_allocated_gib", "train_peak_allocated_gib")]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _final_state(out: Path) -> dict | None:
    states = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return _load(states[-1]) if states else None


def _loss_summary(losses: list[float]) -> dict:
    if not losses:
        return {}
    k = max(1, min(4, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"loss_first": losses[0], "loss_last": losses[-1], f"loss_first{k}_mean": first,
            f"loss_last{k}_mean": last, "loss_fell": last < first}  # fmt: skip


def axolotl_run(run: Path) -> dict | None:
    if not run.exists():
        return None
    meters = sorted(m for m in run.glob("meter-*.json") if not m.stem.endswith("fingerprint"))
    payloads = [_load(m) for m in meters]
    payloads = [p for p in payloads if p]
    result: dict = {"path": run.name, "invocations": len(payloads)}
    if not payloads:
        return result | {"error": "no meter output"}
    # throughput: the longest invocation (the resumed one), after its warm-up steps
    longest = max(payloads, key=lambda p: len(p["steps"]))
    result["throughput"] = steady_state(longest)
    result["throughput_per_invocation"] = [steady_state(p) | {"first_step": p["first_step"]} for p in payloads]
    result["peak_allocated_gib"] = _peak(payloads)
    result["peak_reserved_gib"] = max((p.get("train_peak_reserved_gib") or 0) for p in payloads)
    result["device"] = payloads[0].get("device")
    state = _final_state(run / "out")
    if state:
        losses = [e["loss"] for e in state["log_history"] if "loss" in e]
        steps = [e["step"] for e in state["log_history"] if "loss" in e]
        result.update(_loss_summary(losses))
        result["global_step"] = state["global_step"]
        result["logged_steps_contiguous"] = steps == list(range(1, len(steps) + 1))
    if len(payloads) > 1:
        result["killed_run_checkpoints"] = payloads[0]["saves"]
        result["resumed_first_step"] = payloads[-1]["first_step"]
        ckpt = max(payloads[0]["saves"]) if payloads[0]["saves"] else None
        result["resume_continues_step_counter"] = ckpt is not None and payloads[-1]["first_step"] == ckpt + 1
    result["adapter_exists"] = (run / "out" / "adapter_model.safetensors").exists()
    result["adapter_config_exists"] = (run / "out" / "adapter_config.json").exists()
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(run.glob("train-*.log")))
    result["unsloth_loaded"] = UNSLOTH_LINE in logs
    result["unsloth_import_warning"] = bool(re.search(r"imported? (Unsloth )?(after|before) transformers|"
                                                      r"should be imported before", logs, re.I))  # fmt: skip
    result["resumed_log_line"] = bool(re.search(r"resum\w* .*checkpoint-\d+", logs, re.I))
    return result


def standalone_run(run: Path) -> dict | None:
    summary = _load(run / "summary.json")
    if summary is None:
        payload = _load(run / "throughput.json")
        if payload is None:
            return None
        summary = steady_state(payload) | {"peak_allocated_gib": _peak([payload]),
                                           "losses": [e["loss"] for e in payload["losses"]]}  # fmt: skip
    result = {"path": run.name, "throughput": {k: summary.get(k) for k in (
        "steps", "seconds", "tokens", "tokens_per_s", "vision_share", "seconds_per_step_median",
        "in_step_share")}}  # fmt: skip
    result["peak_allocated_gib"] = summary.get("peak_allocated_gib")
    result["trainer"] = summary.get("trainer")
    result["late_import"] = summary.get("late_import")
    result.update(_loss_summary(summary.get("losses") or []))
    return result


LABELS = {
    "standalone": "standalone Unsloth 4-bit (FastVisionModel + TRL SFTTrainer, no Axolotl)",
    "standalone_short": "standalone Unsloth, 16 steps",
    "standalone_late": "standalone Unsloth, imported after transformers/PEFT/TRL, 16 steps",
    "standalone_hf": "standalone Unsloth with transformers' Trainer, 16 steps",
    "unsloth": "plugin `qwenvl.loader: unsloth` via `axolotl train` (kill + resume)",
    "unsloth_late": "plugin `loader: unsloth` via `axolotl train`, 16 steps",
    "unsloth_early": "plugin `loader: unsloth`, Unsloth imported before transformers, 16 steps",
    "transformers": "plugin `qwenvl.loader: transformers` (bnb nf4 + PEFT) via `axolotl train` (kill + resume)",
}
AXOLOTL_RUNS = ("unsloth", "unsloth_late", "unsloth_early", "transformers")
STANDALONE_RUNS = ("standalone", "standalone_short", "standalone_late", "standalone_hf")


def table(results: dict) -> str:
    rows = ["| path | tokens/s (steady) | s/step (median) | in-step share | steps timed | peak alloc GiB | loss first -> last | resume | adapter |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in LABELS:
        r = results.get(key)
        if not r:
            continue
        t = r.get("throughput") or {}
        tps = f"{t['tokens_per_s']:,.0f}" if t.get("tokens_per_s") else "-"
        sps = f"{t['seconds_per_step_median']:.2f}" if t.get("seconds_per_step_median") else "-"
        peak = f"{r['peak_allocated_gib']:.1f}" if r.get("peak_allocated_gib") else "-"
        loss = (f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}" if "loss_first" in r else "-")
        resume = {True: "continues", False: "BROKEN", None: "-"}[r.get("resume_continues_step_counter")]
        adapter = {True: "yes", False: "NO", None: "-"}[r.get("adapter_exists")]
        share = f"{t['in_step_share']:.0%}" if t.get("in_step_share") else "-"
        rows.append(f"| {LABELS[key]} | {tps} | {sps} | {share} | {t.get('steps', '-')} | {peak} | {loss} | {resume} | {adapter} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work")
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args(argv)
    work = Path(args.work)
    results = {}
    for name in AXOLOTL_RUNS:
        r = axolotl_run(work / name)
        if r:
            results[name] = r
    for name in STANDALONE_RUNS:
        r = standalone_run(work / name)
        if r:
            results[name] = r
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Summarise a benchmarks/gpu_suite.sh sitting: one row per job, ratios A/B and A/C, MFU, a PNG.

    python benchmarks/summarize.py SUITE_DIR [--data .gpu] [--json OUT.json] [--md OUT.md] [--png OUT.png]

SUITE_DIR is the suite's work folder (or the unpacked logs.tar.xz) with one folder per job,
`JOB@gpuN`, plus the `peak-*.json` files of the `peak` job (`--peaks DIR` if they lie elsewhere).
`--data` holds bench-image/ and bench-video/ (dataset.json: tokens and ViT grids per record),
which give the FLOPs per sample for MFU (benchmarks/flops.py: LLM and ViT, forward and the
backward a frozen 4-bit base with LoRA needs, no recompute: the "model FLOPs" of the PaLM paper).

Every number comes from benchmarks/throughput.py's meter: tokens/s = text + vision tokens
(attention_mask sum, padding excluded) over the wall time between optimizer-step ends, after the
first 3 steps of each process; samples/s likewise; peak = torch.cuda.max_memory_allocated over the
process; data wait = the share of that wall time outside on_step_begin..on_step_end (the DataLoader
fetch of the next batch, plus logging and callbacks: an upper bound on the time the GPU waits).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import steady_state  # noqa: E402

PATHS = {
    "A": "plugin, loader unsloth (axolotl train)",
    "B": "standalone Unsloth (FastVisionModel + TRL)",
    "C": "Axolotl native multimodal QLoRA",
    "T": "plugin, loader transformers (axolotl train)",
}
UNSLOTH_LINE = "qwenvl: Unsloth FastVisionModel.get_peft_model put LoRA"
JOB = re.compile(r"^(?P<path>[ABCT])-(?P<size>\w+)-(?P<mix>image|video)-b(?P<batch>\d+)(?P<opts>(-[\w]+)*)@(?P<lane>.+)$")


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


SIDE_FILES = ("-fingerprint", "-profile")  # written beside each meter by benchmarks/throughput.py


def _is_meter(path: Path) -> bool:
    return not path.stem.endswith(SIDE_FILES)


def _meters(run: Path) -> list[dict]:
    """One payload per `axolotl train` invocation (rank 0), each with `rank_payloads` of all ranks."""
    meters = sorted(m for m in run.glob("meter-*.json") if _is_meter(m) and ".rank" not in m.name)
    if not meters and (run / "throughput.json").exists():  # the standalone script's meter
        meters = [run / "throughput.json"]
    payloads = []
    for meter in meters:
        payload = _load(meter)
        if not payload:
            continue
        ranks = sorted(r for r in run.glob(f"{meter.stem}.rank*.json") if _is_meter(r))
        payload["rank_payloads"] = [payload] + [p for p in (_load(r) for r in ranks) if p]
        payloads.append(payload)
    return payloads


def _losses(run: Path, payloads: list[dict]) -> list[float]:
    states = sorted(run.glob("out/checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    losses = [e["loss"] for p in payloads for e in p.get("losses", [])]
    if states:
        state = _load(states[-1])
        from_state = [e["loss"] for e in state["log_history"] if "loss" in e]
        if len(from_state) >= len(losses):
            return from_state
    return losses


def job_result(run: Path, batch: int) -> dict | None:
    payloads = _meters(run)
    if not payloads:
        return None
    longest = max(payloads, key=lambda p: len(p["steps"]))
    if "-prof" in run.name:  # meters from before the `profiled` flag: the suite profiles steps 6-7
        for p in longest["rank_payloads"]:
            for s in p["steps"]:
                s.setdefault("profiled", s["step"] in (6, 7))
    # Under DDP each rank meters its own micro-batches over the same steps: rates add up.
    per_rank = [steady_state(p) for p in longest["rank_payloads"]]
    steady = dict(per_rank[0])
    steady["tokens_per_s"] = sum(r["tokens_per_s"] or 0 for r in per_rank)
    samples_per_s = sum(r["micro_batches"] * batch / r["seconds"] for r in per_rank if r["seconds"])
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(run.glob("train-*.log")))
    rank_peaks = [max(filter(None, [p.get("load_peak_allocated_gib"), p.get("train_peak_allocated_gib")]
                             + [s.get("peak_allocated_gib") for s in p["steps"]]), default=None)
                  for p in longest["rank_payloads"]]  # fmt: skip
    # Axolotl's memory log calls reset_peak_memory_stats() at every logging step, so a meter that
    # read max_memory_allocated only at its last write (before per-step peaks, 2026-11-28) could
    # miss the peak; Axolotl's own logged per-interval peaks still hold it.
    logged = [float(v) for v in re.findall(r"memory/max_allocated \(GiB\)': '([0-9.]+)'", logs)]
    peaks = [p for p in rank_peaks if p is not None] + logged
    losses = _losses(run, payloads)
    result = {
        "tokens_per_s": steady["tokens_per_s"],
        "samples_per_s": samples_per_s or None,
        "gpus": len(per_rank),
        "peak_gib": max(peaks, default=None),
        "rank_peak_gib": rank_peaks,
        "data_wait": 1 - steady["in_step_share"] if steady.get("in_step_share") else None,
        "steps_timed": steady["steps"],
        "tokens_per_step": steady["tokens"] / steady["steps"] if steady["steps"] else None,
        "vision_share": steady["vision_share"],
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "device": longest.get("device"),
        "invocations": len(payloads),
        "global_step": max(p["global_step"] for p in payloads),
        "unsloth_loaded": UNSLOTH_LINE in logs or None,
    }
    if len(payloads) > 1:
        saves = payloads[0]["saves"]
        result["resumed_at"] = payloads[-1]["first_step"]
        result["resume_continues"] = bool(saves) and payloads[-1]["first_step"] == max(saves) + 1
    return result


def flops_per_sample(size: str, mix: str, data_root: Path) -> dict | None:
    """Model FLOPs of one training sample (LLM + ViT) from the dataset's token counts and grids."""
    stats = _load(data_root / f"bench-{mix}" / "dataset.json")
    if not stats:
        return None
    from benchmarks.flops import batch_flops, size_config

    config = size_config(size)
    counts = [batch_flops(config, [r["tokens"]], r["grids"]) for r in stats["records"]]
    return {"train_model": statistics.fmean(c.train_model for c in counts),
            "train_hardware": statistics.fmean(c.train_hardware for c in counts)}  # fmt: skip


def summarize(suite: Path, data_root: Path, peaks_dir: Path | None = None) -> dict:
    peaks = {}
    for file in sorted((peaks_dir or suite).glob("peak-*.json")):
        payload = _load(file)
        peaks[file.stem.removeprefix("peak-")] = payload
    peak_tflops = statistics.fmean(p["bf16_tflops"] for p in peaks.values()) if peaks else None
    rows = []
    flops_cache: dict = {}
    for run in sorted(p for p in suite.iterdir() if p.is_dir()):
        match = JOB.match(run.name)
        if not match:
            continue
        spec = match.groupdict()
        batch = int(spec["batch"])
        result = job_result(run, batch)
        if result is None:
            rows.append({"job": run.name, **spec, "batch": batch, "error": "no meter output"})
            continue
        key = (spec["size"], spec["mix"])
        if key not in flops_cache:
            flops_cache[key] = flops_per_sample(*key, data_root)
        flops = flops_cache[key]
        if flops and peak_tflops and result["samples_per_s"]:
            result["tflops_per_s"] = result["samples_per_s"] * flops["train_model"] / 1e12
            result["mfu"] = result["tflops_per_s"] / (peak_tflops * result["gpus"])  # per GPU
        rows.append({"job": run.name, **spec, "batch": batch, "opts": spec["opts"].strip("-"), **result})
    return {"peak_bf16_tflops": peak_tflops, "peaks": peaks, "rows": rows, "ratios": ratios(rows),
            "scaling": scaling(rows)}  # fmt: skip


def scaling(rows: list[dict]) -> list[dict]:
    """Multi-GPU tokens/s over (GPUs x one-GPU tokens/s) for the same path, model, mix and batch."""
    single = {(r["path"], r["size"], r["mix"], r["batch"]): r for r in rows if r.get("gpus") == 1 and r.get("tokens_per_s")}
    out = []
    for r in rows:
        base = single.get((r["path"], r["size"], r["mix"], r["batch"]))
        if r.get("gpus", 1) > 1 and base and r.get("tokens_per_s"):
            out.append({"job": r["job"], "baseline": base["job"], "gpus": r["gpus"],
                        "tokens_per_s": r["tokens_per_s"], "baseline_tokens_per_s": base["tokens_per_s"],
                        "efficiency": r["tokens_per_s"] / (r["gpus"] * base["tokens_per_s"])})  # fmt: skip
    return out


# Options that change how a job is measured or launched, not what it trains: ignored when pairing.
MEASUREMENT_OPTIONS = {"prof", "g1", "force"}  # force: the 2026-11-28 unsloth + DDP probe


def _training_opts(opts: str) -> str:
    kept = [o for o in opts.split("-") if o not in MEASUREMENT_OPTIONS]
    return "-".join(kept) or "-"


def ratios(rows: list[dict]) -> list[dict]:
    """A/B and A/C per (size, mix, batch, options), on the mean of repeated runs of a job."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("tokens_per_s") and row.get("gpus") == 1:
            groups[(row["size"], row["mix"], row["batch"], _training_opts(row["opts"]))][row["path"]].append(row)
    out = []
    for (size, mix, batch, opts), by_path in sorted(groups.items()):
        mean = {p: (statistics.fmean(r["tokens_per_s"] for r in rs), statistics.fmean(r["peak_gib"] for r in rs))
                for p, rs in by_path.items()}  # fmt: skip
        if "A" not in mean:
            continue
        entry = {"size": size, "mix": mix, "batch": batch, "opts": opts}
        for other in ("B", "C", "T"):
            if other in mean:
                entry[f"A/{other} tokens/s"] = mean["A"][0] / mean[other][0]
                entry[f"A/{other} peak"] = mean["A"][1] / mean[other][1]
        out.append(entry)
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    lines = ["| job | path | model | mix | batch | GPUs | tokens/s | samples/s | peak GiB | MFU | data wait | loss first -> last | resume |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['job']} | {r['path']} | {r['size']} | {r['mix']} | {r['batch']} | | {r['error']} |||||||")
            continue
        loss = f"{_fmt(r['loss_first'], '.2f')} -> {_fmt(r['loss_last'], '.2f')}"
        resume = {True: f"continues at {r.get('resumed_at')}", False: "BROKEN", None: "-"}[r.get("resume_continues")]
        lines.append(
            f"| {r['job']} | {r['path']} | {r['size']} | {r['mix']} | {r['batch']} | {r['gpus']} | {_fmt(r['tokens_per_s'], ',.0f')} "
            f"| {_fmt(r['samples_per_s'], '.2f')} | {_fmt(r['peak_gib'], '.2f')} | {_fmt(r.get('mfu'), '.1%')} "
            f"| {_fmt(r['data_wait'], '.1%')} | {loss} | {resume} |"
        )
    lines += ["", "| model | mix | batch | options | A/B tokens/s | A/B peak | A/C tokens/s | A/C peak |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in summary["ratios"]:
        lines.append(
            f"| {e['size']} | {e['mix']} | {e['batch']} | {e['opts'] or '-'} | {_fmt(e.get('A/B tokens/s'), '.2f')} "
            f"| {_fmt(e.get('A/B peak'), '.2f')} | {_fmt(e.get('A/C tokens/s'), '.2f')} | {_fmt(e.get('A/C peak'), '.2f')} |"
        )
    if summary.get("scaling"):
        lines += ["", "| multi-GPU job | GPUs | tokens/s | one-GPU job | tokens/s | scaling efficiency |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for e in summary["scaling"]:
            lines.append(f"| {e['job']} | {e['gpus']} | {e['tokens_per_s']:,.0f} | {e['baseline']} "
                         f"| {e['baseline_tokens_per_s']:,.0f} | {e['efficiency']:.0%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".gpu"))
    parser.add_argument("--peaks", default=None)
    parser.add_argument("--json")
    parser.add_argument("--md")
    parser.add_argument("--png")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    summary = summarize(Path(args.suite), Path(args.data), Path(args.peaks) if args.peaks else None)
    text = markdown(summary)
    print(f"measured bf16 peak: {_fmt(summary['peak_bf16_tflops'], '.0f')} TFLOP/s")
    print(text)
    for entry in summary["ratios"]:
        print("ratio", json.dumps(entry))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.md:
        Path(args.md).write_text(text)
    if args.png:
        from benchmarks.plot_results import plot

        runs = [{"path": r["path"] + ("" if r["gpus"] == 1 else f" x{r['gpus']} GPUs"), "label": PATHS[r["path"]],
                 "model": r["size"], "batch": r["batch"], "mix": r["mix"],
                 "seq": round(r["tokens_per_step"] / r["batch"]) if r.get("tokens_per_step") else 0,
                 "tokens_per_s": r["tokens_per_s"], "samples_per_s": r["samples_per_s"], "peak_gib": r["peak_gib"],
                 "mfu": r.get("mfu")} for r in summary["rows"] if "error" not in r]  # fmt: skip
        plot(runs, Path(args.png), title=args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())

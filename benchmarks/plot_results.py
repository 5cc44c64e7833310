"""Bar chart of benchmark runs: tokens/s and peak GiB per path and configuration, MFU annotated.

    python benchmarks/plot_results.py results.json [more.json ...] --out chart.png [--title T]

Input schema (one file holds a list of runs, or an object with a "runs" list and optional
metadata such as "gpu" and "bf16_tflops", which go into the title):

    {"gpu": "NVIDIA H100 80GB HBM3", "bf16_tflops": 760.0,
     "runs": [{"path": "A", "label": "transformers + bnb 4-bit", "model": "3b", "batch": 1,
               "seq": 2654, "mix": "image", "tokens_per_s": 2966.9, "samples_per_s": 1.12,
               "peak_gib": 4.4, "mfu": 0.21}, ...]}

`path` names the training path ("A", "B", "C", ...), `label` describes it, `model` is "3b" or
"7b", `mix` is "image" or "video", `mfu` is a fraction (0.21 = 21 %) or null when unknown.
Runs are grouped by configuration (model, batch, seq, mix) along the x axis, one bar per path.
Needs matplotlib (not a dependency of the plugin: `pip install matplotlib`); `load_runs` and
`validate_run` work without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

REQUIRED = {
    "path": str,
    "label": str,
    "model": str,
    "batch": int,
    "seq": int,
    "mix": str,
    "tokens_per_s": (int, float),
    "samples_per_s": (int, float),
    "peak_gib": (int, float),
}
OPTIONAL = {"mfu": (int, float, type(None))}
MODELS = ("3b", "7b")
MIXES = ("image", "video")


def validate_run(run: dict, where: str = "run") -> dict:
    """Check one run against the schema; return it. Raises ValueError naming the bad field."""
    if not isinstance(run, dict):
        raise ValueError(f"{where}: expected an object, got {type(run).__name__}")
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        if key not in run:
            if key in OPTIONAL:
                continue
            raise ValueError(f"{where}: missing {key!r}")
        value = run[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{where}: {key!r} is {value!r}, expected {getattr(kind, '__name__', kind)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {key!r} is {value!r}")
    if run["model"] not in MODELS:
        raise ValueError(f"{where}: model {run['model']!r} is not one of {MODELS}")
    if run["mix"] not in MIXES:
        raise ValueError(f"{where}: mix {run['mix']!r} is not one of {MIXES}")
    for key in ("batch", "seq", "tokens_per_s", "samples_per_s", "peak_gib"):
        if run[key] < 0:
            raise ValueError(f"{where}: {key!r} is negative ({run[key]})")
    mfu = run.get("mfu")
    if mfu is not None and not 0 <= mfu <= 1:
        raise ValueError(f"{where}: mfu {mfu} is not a fraction in [0, 1]")
    return run


def load_runs(paths: Iterable[str | Path]) -> tuple[list[dict], dict]:
    """Runs from every file, validated, and the metadata of the files (later files win)."""
    runs, meta = [], {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            meta.update({k: v for k, v in data.items() if k != "runs"})
            data = data.get("runs")
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of runs or an object with a 'runs' list")
        runs += [validate_run(r, f"{path}: run {i}") for i, r in enumerate(data)]
    if not runs:
        raise ValueError("no runs to plot")
    return runs, meta


def _config_key(run: dict) -> tuple:
    return (run["model"], run["batch"], run["seq"], run["mix"])


def plot(runs: list[dict], out: str | Path, *, title: str | None = None) -> Path:
    """Write the PNG: tokens/s (MFU on each bar) above, peak GiB below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({_config_key(r) for r in runs}, key=lambda c: (c[0], c[3], c[1], c[2]))
    paths = sorted({r["path"] for r in runs})
    labels = {}
    for r in runs:
        labels.setdefault(r["path"], r["label"])
    by = {(r["path"], _config_key(r)): r for r in runs}  # a repeated run: the last one wins

    width = 0.8 / len(paths)
    fig_width = min(24.0, 3.0 + len(configs) * (0.8 + 0.5 * len(paths)))
    fig, (ax_tok, ax_mem) = plt.subplots(2, 1, figsize=(fig_width, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, path in enumerate(paths):
        xs, toks, mems, mfus = [], [], [], []
        for i, cfg in enumerate(configs):
            run = by.get((path, cfg))
            if run is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            toks.append(run["tokens_per_s"])
            mems.append(run["peak_gib"])
            mfus.append(run.get("mfu"))
        color = colors[j % len(colors)]
        bars = ax_tok.bar(xs, toks, width, label=f"{path}: {labels[path]}", color=color)
        ax_mem.bar(xs, mems, width, color=color)
        for bar, value in zip(bars, mfus):
            if value is not None:
                ax_tok.annotate(
                    f"{value * 100:.1f}%",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8,
                )
    ax_tok.set_ylabel("tokens / s")
    ax_tok.set_title(textwrap.fill(title or "Qwen2.5-VL LoRA training throughput (MFU on the bars)", 70), fontsize=10)
    ax_tok.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax_tok.margins(y=0.12)
    ax_mem.set_ylabel("peak GiB")
    ax_mem.set_xticks(range(len(configs)))
    ax_mem.set_xticklabels([f"{m}\n{mix}\nbatch {b}, seq {s}" for m, b, s, mix in configs], fontsize=8)
    for ax in (ax_tok, ax_mem):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # keeps the legend right of the axes
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot benchmark runs (tokens/s, peak GiB, MFU) to a PNG.")
    parser.add_argument("results", nargs="+", type=Path, help="result JSON file(s)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: the first file with .png)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    runs, meta = load_runs(args.results)
    title = args.title
    if title is None and meta.get("gpu"):
        peak = f", measured bf16 peak {meta['bf16_tflops']:.0f} TFLOP/s" if meta.get("bf16_tflops") else ""
        title = f"Qwen2.5-VL LoRA training on {meta['gpu']}{peak} (MFU on the bars)"
    try:
        out = plot(runs, args.out or args.results[0].with_suffix(".png"), title=title)
    except ImportError:
        print("plot_results.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure this GPU's dense bf16 matmul peak, the denominator of MFU (issue #7).

    python benchmarks/bf16_peak.py [--seconds 20] [--out peak.json]
    python benchmarks/bf16_peak.py --cpu          # dry run of the same code path on the CPU

Large square-ish `torch.matmul`s in bf16 (8192^3 and 16384x8192x8192 by default) into a
preallocated output, timed with CUDA events: after a warmup each shape is timed in trials of
`iters` back-to-back matmuls (`iters` sized so a trial takes ~50 ms), and the best trial's
TFLOP/s (2*m*n*k per matmul) over all shapes is the peak. The best trial, not the mean: MFU
compares against what the chip can do, and a short burst is what reaches the boost clock; the
median is written too. The whole run stops after `--seconds` (default 20, so it ends within
~30 s on an H100 including CUDA start-up). Prints and writes
`{"gpu": name, "bf16_tflops": best, ...}`.

`--cpu` runs the same measurement with small shapes on the CPU (wall-clock timing), to test the
script where there is no GPU; its number means nothing for MFU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

GPU_SHAPES = ((8192, 8192, 8192), (16384, 8192, 8192))
CPU_SHAPES = ((256, 256, 256), (512, 256, 256))
TRIAL_SECONDS = 0.05


def _parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    shapes = []
    for part in text.split(","):
        dims = tuple(int(x) for x in part.lower().split("x"))
        if len(dims) != 3 or min(dims) <= 0:
            raise argparse.ArgumentTypeError(f"shape {part!r} is not MxNxK")
        shapes.append(dims)
    return tuple(shapes)


class _Timer:
    """CUDA events on a GPU, perf_counter on the CPU; `elapsed()` in seconds."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start = self.torch.cuda.Event(enable_timing=True)
            self.end = self.torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def measure(shapes=GPU_SHAPES, *, seconds: float = 20.0, device: str = "cuda", warmup: int = 3) -> dict:
    """Best-of-N matmul TFLOP/s over `shapes` within a `seconds` budget; returns the result dict."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU visible (use --cpu for a dry run)")
    torch_dtype = torch.bfloat16
    deadline = time.monotonic() + seconds
    per_shape = {}
    best = 0.0
    # each shape gets an equal share of what is left of the budget
    for i, (m, n, k) in enumerate(shapes):
        share_end = time.monotonic() + (deadline - time.monotonic()) / (len(shapes) - i)
        gen = torch.Generator(device=dev).manual_seed(i)
        a = torch.randn(m, k, device=dev, dtype=torch_dtype, generator=gen)
        b = torch.randn(k, n, device=dev, dtype=torch_dtype, generator=gen)
        c = torch.empty(m, n, device=dev, dtype=torch_dtype)
        flop = 2 * m * n * k
        for _ in range(warmup):
            torch.matmul(a, b, out=c)
        with _Timer(torch, dev) as t:  # calibrate: one matmul
            torch.matmul(a, b, out=c)
        iters = max(1, min(200, round(TRIAL_SECONDS / max(t.seconds, 1e-9))))
        rates = []
        while not rates or time.monotonic() < share_end:
            with _Timer(torch, dev) as t:
                for _ in range(iters):
                    torch.matmul(a, b, out=c)
            rates.append(flop * iters / t.seconds / 1e12)
        per_shape[f"{m}x{n}x{k}"] = {
            "best_tflops": max(rates),
            "median_tflops": statistics.median(rates),
            "trials": len(rates),
            "iters_per_trial": iters,
        }
        best = max(best, max(rates))
        del a, b, c
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        extra = {"cuda": torch.version.cuda, "capability": ".".join(map(str, torch.cuda.get_device_capability(dev)))}
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
        extra = {"threads": torch.get_num_threads()}
    return {
        "gpu": name,
        "bf16_tflops": float(f"{best:.4g}"),
        "device": dev.type,
        "shapes": per_shape,
        "torch": torch.__version__,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the GPU's dense bf16 matmul peak (TFLOP/s).")
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget for the measurement (default 20)")
    parser.add_argument(
        "--shapes", type=_parse_shapes, help="comma-separated MxNxK (default 8192x8192x8192,16384x8192x8192)"
    )
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU with small shapes")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    shapes = args.shapes or (CPU_SHAPES if args.cpu else GPU_SHAPES)
    result = measure(shapes, seconds=args.seconds, device="cpu" if args.cpu else "cuda")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' step meter (benchmarks/throughput.py) on CPU: token counting, per-step records
and the optional profiler window. The GPU numbers it produces are in benchmarks/results/."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks.throughput import StepMeter, _busy_seconds, kernel_kind, profile_window, steady_state


def test_profile_window_parses_ranges_and_single_steps():
    assert profile_window("") is None
    assert profile_window("6:8") == (6, 8)
    assert profile_window("5") == (5, 5)


def test_busy_seconds_is_the_union_of_kernel_intervals():
    # [0,10) and [5,20) overlap -> 20 ns; [30,40) apart -> 10 ns; [32,35) inside it adds nothing
    assert _busy_seconds([(30, 40), (0, 10), (5, 20), (32, 35)]) == pytest.approx(30e-9)
    assert _busy_seconds([]) == 0.0


def test_kernel_kinds():
    assert kernel_kind("void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>") == "4-bit dequantize (bitsandbytes)"
    assert kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul (cuBLAS/CUTLASS)"
    assert kernel_kind("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert kernel_kind("triton_poi_fused_add_mul_0") == "triton (compiled / Unsloth)"
    assert kernel_kind("some_custom_kernel") == "other"


def _run_steps(meter: StepMeter, steps: int) -> None:
    state = SimpleNamespace(global_step=0)
    meter.on_train_begin(None, state, None)
    weight = torch.randn(64, 64, requires_grad=True)
    for _ in range(steps):
        meter.on_step_begin(None, state, None)
        batch = {"input_ids": torch.tensor([[1, 7, 7, 2], [1, 8, 2, 0]]),
                 "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}  # fmt: skip
        meter.count(batch)
        (torch.randn(32, 64) @ weight).square().mean().backward()
        state.global_step += 1
        meter.on_step_end(None, state, None)
        meter.on_log(None, state, None, logs={"loss": 1.0 / state.global_step})
    meter.on_train_end(None, state, None)


def test_meter_counts_tokens_and_vision_tokens_per_step(tmp_path, monkeypatch):
    monkeypatch.delenv("QWENVL_BENCH_PROFILE", raising=False)
    meter = StepMeter(tmp_path / "meter.json", label="cpu", image_token_id=7, video_token_id=8)
    _run_steps(meter, 5)
    payload = json.loads((tmp_path / "meter.json").read_text())
    assert payload["finished"] and payload["global_step"] == 5 and payload["first_step"] == 1
    assert [s["tokens"] for s in payload["steps"]] == [7] * 5  # padding excluded
    assert [s["vision_tokens"] for s in payload["steps"]] == [3] * 5  # two 7s and one 8
    assert all(s["step_seconds"] <= s["seconds"] for s in payload["steps"])
    assert [entry["loss"] for entry in payload["losses"]] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    summary = steady_state(payload, skip=2)
    assert summary["steps"] == 3 and summary["tokens"] == 21
    assert summary["vision_share"] == pytest.approx(3 / 7)
    assert not (tmp_path / "meter-profile.json").exists()


def test_profile_window_writes_a_summary_of_the_profiled_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENVL_BENCH_PROFILE", "2:3")
    meter = StepMeter(tmp_path / "meter.json")
    _run_steps(meter, 4)
    profile = json.loads((tmp_path / "meter-profile.json").read_text())
    assert "error" not in profile, profile
    assert profile["steps"] == 2 and profile["wall_seconds"] > 0
    names = {op["name"] for op in profile["top_host_ops"]}
    assert "aten::mm" in names or "aten::matmul" in names  # the profiled steps' matmuls were recorded
    # CPU only: no CUDA kernels, so the GPU was never busy
    assert profile["kernels"] == 0 and profile["gpu_busy_seconds"] == 0.0
    assert "Self CPU" in (tmp_path / "meter-profile.log").read_text()
    # the meter kept recording every step around the window
    assert len(json.loads((tmp_path / "meter.json").read_text())["steps"]) == 4

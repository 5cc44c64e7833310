#!/usr/bin/env bash
# Issue 5 on one GPU: the plugin's Unsloth and transformers loaders through `axolotl train`
# (QLoRA, checkpoint + resume), a standalone Unsloth baseline, and the import-order check, on a
# random-init Qwen2.5-VL-3B with 448x448 images and 16-frame 336x336 videos.
#
#   benchmarks/gpu_issue5.sh [PHASE ...]      (default: every phase, in this order)
#
# Phases:
#   smoke          pytest -m "gpu or unsloth": tiny model through Unsloth (tests/test_unsloth_gpu.py;
#                  with ISSUE5_SMOKE_ALL=1 also tests/test_loading.py)
#   standalone     benchmarks/unsloth_standalone.py (FastVisionModel + TRL, no Axolotl), 24 steps
#   unsloth        axolotl train, qwenvl.loader: unsloth; killed after checkpoint-12, resumed to 36
#   transformers   the same with qwenvl.loader: transformers (bitsandbytes nf4 + PEFT)
#   unsloth_early  axolotl's train entry point with Unsloth imported before transformers, 16 steps
#   unsloth_late   the same entry as `axolotl train` (Unsloth imported by the plugin), 16 steps
#   standalone_short / standalone_late / standalone_hf
#                  standalone, 16 steps; Unsloth imported after transformers/PEFT/TRL; HF Trainer
# Each phase is skipped when it would not end before $ISSUE5_DEADLINE seconds (default 560).
#
# Inputs: the carried site archive .gpu/site.tar.xz (../shared/device/gpu-site.sh) and the dataset
# .gpu/issue5-data (benchmarks/make_gpu_dataset.py; it needs PyAV, so it is written on CPU).
# Outputs under $OUT: gpu.txt, phases.txt, summary.md, results.json, logs.tar.xz.
# ISSUE5_CPU=1 dry-runs the Axolotl phases on CPU with the tiny model (LoRA in fp32, no bitsandbytes).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/issue5-out}
WORK=${ISSUE5_WORK:-/tmp/issue5}
MODEL=${ISSUE5_MODEL:-/tmp/qwen3b}
DATA=${ISSUE5_DATA:-$ROOT/.gpu/issue5-data/train.jsonl}
DEADLINE=${ISSUE5_DEADLINE:-560}
PY=${PYTHON:-python3}
CPU=${ISSUE5_CPU:-}
SIZE=3b CPUFLAG=()
if [ -n "$CPU" ]; then SIZE=tiny CPUFLAG=(--cpu); MODEL=${ISSUE5_MODEL:-/tmp/qwen-tiny}; fi
mkdir -p "$OUT" "$WORK"
cd "$ROOT"

# -- environment ------------------------------------------------------------------------------
if [ -z "$CPU" ]; then  # the GPU machine: packages it lacks come from the carried archive
  if [ -f .gpu/site.tar.xz ] && [ ! -f /tmp/site/.unpacked ]; then
    mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.unpacked
  fi
  export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
export UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled AXOLOTL_DO_NOT_TRACK=1 \
       DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/shim
PYBIN=$(command -v "$PY")
if ! command -v axolotl >/dev/null; then
  printf '#!/bin/sh\nexec %s -m axolotl.cli.main "$@"\n' "$PYBIN" > /tmp/shim/axolotl
fi
if ! command -v accelerate >/dev/null; then
  printf '#!/bin/sh\nexec %s -m accelerate.commands.accelerate_cli "$@"\n' "$PYBIN" > /tmp/shim/accelerate
fi
chmod +x /tmp/shim/* 2>/dev/null
export PATH=/tmp/shim:$PATH

note() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/phases.txt"; }
fits() { [ $((SECONDS + $1)) -le "$DEADLINE" ]; }
cap() { local left=$((DEADLINE + 30 - SECONDS)); [ "$left" -lt "$1" ] && echo "$((left > 5 ? left : 5))" || echo "$1"; }

finish() {
  note "summary"
  "$PY" benchmarks/summarize_issue5.py "$WORK" --json "$OUT/results.json" --md "$OUT/summary.md" \
    >> "$OUT/phases.txt" 2>&1
  (cd "$WORK" && find . -type f \( -name '*.log' -o -name '*.json' -o -name 'cfg.yml' \) \
     ! -path '*/prepared/*' ! -name 'tokenizer*.json' ! -name 'vocab.json' ! -path '*/merged/*' -print0 \
     | tar --null -cJf "$OUT/logs.tar.xz" -T - 2>/dev/null)
  (cd "$WORK" && find . -path '*/prepared' -prune -o -type f -printf '%p %s\n' 2>/dev/null | sort) > "$OUT/files.txt"
  cat "$OUT/summary.md" 2>/dev/null
}
trap finish EXIT

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (CPU dry run)"
  "$PY" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "transformers", "accelerate", "axolotl", "unsloth", "unsloth_zoo", "bitsandbytes",
             "peft", "trl", "datasets", "decord"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} -")
EOF
} > "$OUT/gpu.txt" 2>&1
note "gpu: $(head -1 "$OUT/gpu.txt")"

model() {
  if [ ! -f "$MODEL/config.json" ]; then
    note "building random-init $SIZE at $MODEL"
    "$PY" -m axolotl_qwenvl_plugin.tiny "$MODEL" --size $SIZE > "$WORK/build-3b.log" 2>&1 || { note "build FAILED"; return 1; }
  fi
}

# -- phases -----------------------------------------------------------------------------------
smoke() {
  fits 240 || { note "smoke skipped (time)"; return 0; }
  local tests=(tests/test_unsloth_gpu.py)
  [ -n "${ISSUE5_SMOKE_ALL:-}" ] && tests+=(tests/test_loading.py)
  note "smoke: pytest -m 'gpu or unsloth' ${tests[*]} (tiny model)"
  mkdir -p "$WORK/smoke"
  timeout "$(cap 300)" "$PY" -m pytest "${tests[@]}" -m "gpu or unsloth" -q -x \
    -p no:cacheprovider --basetemp="$WORK/smoke/tmp" > "$WORK/smoke/pytest.log" 2>&1
  local rc=$?
  note "smoke rc=$rc: $(tail -1 "$WORK/smoke/pytest.log")"
  find "$WORK/smoke/tmp" -name 'axolotl-*.log' -exec cp {} "$WORK/smoke/" \; 2>/dev/null
  return $rc
}

# standalone [NAME STEPS EXTRA-ARGS...]: benchmarks/unsloth_standalone.py into $WORK/NAME
standalone() {
  local name=${1:-standalone} steps=${2:-24}
  shift 2 2>/dev/null
  fits 160 || { note "$name skipped (time)"; return 0; }
  model || return 1
  note "$name: standalone Unsloth ($steps steps) $*"
  rm -rf "$WORK/$name"
  mkdir -p "$WORK/$name"
  timeout "$(cap 330)" "$PY" benchmarks/unsloth_standalone.py --model "$MODEL" --data "$DATA" \
    --out "$WORK/$name" --steps "$steps" "$@" > "$WORK/$name/run.log" 2>&1
  note "$name rc=$?: $(grep -h '^unsloth_standalone' "$WORK/$name/run.log" | tail -1)"
}

# axolotl train, killed once checkpoint-$SAVE is complete, then resumed to $STEPS
axolotl_path() {
  local name=$1 loader=$2 steps=36 save=12 run="$WORK/$1"
  model || return 1
  rm -rf "$run" && mkdir -p "$run"
  "$PY" benchmarks/issue5_config.py --loader "$loader" --model "$MODEL" --data "$DATA" --run-dir "$run" \
    --max-steps $steps --save-steps $save "${CPUFLAG[@]}" > "$run/cfg.yml"
  note "$name: preprocess"
  timeout "$(cap 150)" axolotl preprocess "$run/cfg.yml" > "$run/preprocess.log" 2>&1 || { note "$name preprocess FAILED"; return 1; }
  note "$name: train (to be killed after checkpoint-$save)"
  QWENVL_BENCH_JSON="$run/meter-1.json" QWENVL_BENCH_LABEL="$name-1" \
    setsid axolotl train "$run/cfg.yml" > "$run/train-1.log" 2>&1 &
  local pid=$! waited=0 ckpt="$run/out/checkpoint-$save"
  local limit; limit=$(cap 300)
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt "$limit" ]; do
    if [ -f "$ckpt/trainer_state.json" ] && [ -f "$ckpt/rng_state.pth" ]; then sleep 3; break; fi
    sleep 1; waited=$((waited + 1))
  done
  kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  if [ ! -f "$ckpt/trainer_state.json" ]; then note "$name: no checkpoint-$save (see train-1.log)"; return 1; fi
  [ -f "$run/out/adapter_model.safetensors" ] && note "$name: WARNING the killed run had finished"
  note "$name: killed after checkpoint-$save; resuming"
  QWENVL_BENCH_JSON="$run/meter-2.json" QWENVL_BENCH_LABEL="$name-2" \
    timeout "$(cap 300)" axolotl train "$run/cfg.yml" > "$run/train-2.log" 2>&1
  note "$name: resumed run rc=$?"
}

unsloth_path() { fits 320 || { note "unsloth skipped (time)"; return 0; }; axolotl_path unsloth unsloth; }
transformers_path() { fits 280 || { note "transformers skipped (time)"; return 0; }; axolotl_path transformers transformers; }

# one axolotl train invocation of STEPS steps, no checkpoint: NAME LOADER STEPS early|late
axolotl_once() {
  local name=$1 loader=$2 steps=$3 order=$4 run="$WORK/$1"
  fits 180 || { note "$name skipped (time)"; return 0; }
  model || return 1
  rm -rf "$run" && mkdir -p "$run"
  "$PY" benchmarks/issue5_config.py --loader "$loader" --model "$MODEL" --data "$DATA" --run-dir "$run" \
    --max-steps "$steps" --save-steps 1000 "${CPUFLAG[@]}" > "$run/cfg.yml"
  local prepared; prepared=$(ls -d "$WORK"/*/prepared 2>/dev/null | head -1)
  [ -n "$prepared" ] && cp -r "$prepared" "$run/prepared"
  note "$name: axolotl train, loader $loader, Unsloth imported $order ($steps steps)"
  if [ "$order" = early ]; then
    QWENVL_BENCH_JSON="$run/meter-1.json" QWENVL_BENCH_LABEL="$name" \
      timeout "$(cap 300)" accelerate launch benchmarks/axolotl_train_unsloth_first.py "$run/cfg.yml" > "$run/train-1.log" 2>&1
  else
    QWENVL_BENCH_JSON="$run/meter-1.json" QWENVL_BENCH_LABEL="$name" \
      timeout "$(cap 300)" axolotl train "$run/cfg.yml" > "$run/train-1.log" 2>&1
  fi
  note "$name rc=$?"
}

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(smoke standalone unsloth transformers unsloth_early unsloth_late)
for phase in "${phases[@]}"; do
  case $phase in
    smoke) smoke || note "smoke failed (see smoke/pytest.log in logs.tar.xz); going on" ;;
    standalone) standalone standalone 24 ;;
    standalone_short) standalone standalone_short 16 ;;
    standalone_late) standalone standalone_late 16 --late-import ;;
    standalone_hf) standalone standalone_hf 16 --trainer hf ;;
    unsloth) unsloth_path ;;
    transformers) transformers_path ;;
    unsloth_early) axolotl_once unsloth_early unsloth 16 early ;;
    unsloth_late) axolotl_once unsloth_late unsloth 16 late ;;
    *) note "unknown phase $phase" ;;
  esac
  finish > /dev/null  # results so far reach $OUT even if a later phase outruns the call
done

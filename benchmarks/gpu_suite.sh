#!/usr/bin/env bash
# GPU benchmark suite: the same model, data and hyper-parameters through every training path, on
# one multi-GPU machine in one sitting. Lanes run side by side, one GPU each (or several, for DDP);
# the jobs of a lane run one after the other.
#
#   benchmarks/gpu_suite.sh "JOB JOB ..." ["JOB ..." ...]          lane i runs on GPU i
#   benchmarks/gpu_suite.sh "2,3=JOB ..."                          a lane on GPUs 2 and 3
#
# A job is PATH-SIZE-MIX-bBATCH[-OPTION...], e.g. A-3b-image-b4, or a special job:
#   PATH  A  axolotl train + this plugin, qwenvl.loader: unsloth
#         B  standalone Unsloth: benchmarks/unsloth_standalone.py (FastVisionModel + TRL), no Axolotl
#         C  Axolotl's native multimodal QLoRA (chat_template qwen2_vl, bitsandbytes, images only)
#         T  axolotl train + this plugin, qwenvl.loader: transformers (bitsandbytes nf4 + PEFT)
#   SIZE  3b | 7b (random-init Qwen2.5-VL shapes built here by axolotl_qwenvl_plugin.tiny)
#   MIX   image (messages, one 672x672 image, ~1,100 tokens) | video (text, a 448x448 image and a
#         16-frame 336x336 video, 2,654 tokens): .gpu/bench-image, .gpu/bench-video
#   OPTIONS  sN: N steps (default 20) | resume: kill after checkpoint-12, resume to step 36 |
#            gbl: group_by_length | wN: N DataLoader workers (default: the plugin's) |
#            ddp: one process per GPU of the lane (accelerate launcher) |
#            prof: torch.profiler over steps 6-7 (<meter>-profile.json/.log) |
#            gcT / gc0: on-GPU gradient checkpointing / none (default: Unsloth's offloaded) |
#            g1: only the lane's first GPU (a one-GPU baseline inside a multi-GPU lane)
#   special  peak (measured bf16 matmul peak: benchmarks/bf16_peak.py) | smoke (pytest -m gpu)
#
# Every job is skipped when it would not end before $SUITE_DEADLINE seconds (default 555).
# Outputs under $OUT: gpu.txt, phases.txt, peak-*.json, logs.tar.xz (meters, configs, logs).
# Summarise on any machine with benchmarks/summarize.py. SUITE_CPU=1 dry-runs A/C/T on CPU with
# the tiny model (B needs a GPU).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/suite-out}
WORK=${SUITE_WORK:-/tmp/suite}
DEADLINE=${SUITE_DEADLINE:-555}
PY=${PYTHON:-python3}
CPU=${SUITE_CPU:-}
DATA_ROOT=${SUITE_DATA:-$ROOT/.gpu}
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
command -v axolotl >/dev/null || printf '#!/bin/sh\nexec %s -m axolotl.cli.main "$@"\n' "$PYBIN" > /tmp/shim/axolotl
command -v accelerate >/dev/null || printf '#!/bin/sh\nexec %s -m accelerate.commands.accelerate_cli "$@"\n' "$PYBIN" > /tmp/shim/accelerate
chmod +x /tmp/shim/* 2>/dev/null
export PATH=/tmp/shim:$PATH

note() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/phases.txt"; }
fits() { [ $((SECONDS + $1)) -le "$DEADLINE" ]; }
cap() { local left=$((DEADLINE + 30 - SECONDS)); [ "$left" -lt "$1" ] && echo "$((left > 5 ? left : 5))" || echo "$1"; }

collect() {
  (cd "$WORK" && find . -type f \( -name '*.log' -o -name '*.json' -o -name 'cfg.yml' \) \
     ! -path '*/prepared/*' ! -name 'tokenizer*.json' ! -name 'vocab.json' ! -path '*/merged/*' \
     ! -path '*/out/checkpoint-*/*' -print0 | tar --null -cJf "$OUT/logs.tar.xz" -T - 2>/dev/null)
  (cd "$WORK" && find . -path '*/prepared' -prune -o -path '*/site' -prune -o -type f -printf '%p %s\n' \
     2>/dev/null | sort) > "$OUT/files.txt"
}
trap collect EXIT

{
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (CPU dry run)"
  nproc
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
note "gpus: $(head -4 "$OUT/gpu.txt" | tr '\n' ';')"

# model SIZE -> path of a random-init checkpoint, built once (lanes share it; flock serialises)
model() {
  local size=$1 dir
  [ -n "$CPU" ] && size=tiny
  dir=/tmp/qwen-$size
  (
    flock 9
    if [ ! -f "$dir/config.json" ]; then
      note "building random-init $size at $dir" >&2
      "$PY" -m axolotl_qwenvl_plugin.tiny "$dir" --size "$size" > "$WORK/build-$size.log" 2>&1
    fi
  ) 9> "/tmp/build-$size.lock"
  [ -f "$dir/config.json" ] && echo "$dir"
}

# native_data MIX -> Axolotl-native copy of the image mix with absolute media paths
native_data() {
  local src="$DATA_ROOT/bench-$1" dst="$WORK/native-$1.jsonl"
  [ -f "$dst" ] || sed "s#@MEDIA@#$src/media#g" "$src/native.jsonl" > "$dst"
  echo "$dst"
}

estimate() {  # seconds a job needs on an H100 (startup, load, Unsloth compile, steps), measured
  local s
  case $1 in
    peak) echo 40; return ;; smoke) echo 400; return ;;
    *resume*) s=300 ;; A-*) s=250 ;; C-*) s=200 ;; T-*) s=220 ;; *) s=160 ;;
  esac
  [[ $1 == *-7b-* ]] && s=$((s + 60))
  [[ $1 == *-ddp* ]] && s=$((s + 40))
  echo "$s"
}

# run_axolotl RUN NAME ACCELERATE_ARGS... : one `axolotl train` into RUN/meter-NAME.json
train_once() {
  local run=$1 name=$2 ngpu=$3 limit=$4
  local launch=()
  [ "$ngpu" -gt 1 ] && launch=(--launcher accelerate -- --num_processes "$ngpu")
  QWENVL_BENCH_JSON="$run/meter-$name.json" QWENVL_BENCH_LABEL="$(basename "$run")-$name" \
    timeout "$limit" axolotl train "$run/cfg.yml" "${launch[@]}" > "$run/train-$name.log" 2>&1
}

job() {
  local spec=$1 devices=$2 tag=$3
  [[ $spec == smoke || $spec == *-g1* ]] && devices=${devices%%,*}
  local ngpu; ngpu=$(awk -F, '{print NF}' <<< "$devices")
  local run="$WORK/$spec@$tag"
  fits "$(estimate "$spec")" || { note "$tag $spec skipped (time)"; return 0; }
  export CUDA_VISIBLE_DEVICES=$devices
  case $spec in
    peak)
      note "$tag peak: bf16 matmul"
      timeout "$(cap 60)" "$PY" benchmarks/bf16_peak.py --seconds 15 --out "$OUT/peak-$tag.json" ${CPU:+--cpu} \
        > "$WORK/peak-$tag.log" 2>&1
      note "$tag peak rc=$?: $(tail -1 "$WORK/peak-$tag.log")"
      return ;;
    smoke)
      mkdir -p "$run"
      note "$tag smoke: pytest -m gpu tests/test_unsloth_gpu.py"
      timeout "$(cap 430)" "$PY" -m pytest tests/test_unsloth_gpu.py -m "gpu or unsloth" -q -x \
        -p no:cacheprovider --basetemp="$run/tmp" > "$run/pytest.log" 2>&1
      note "$tag smoke rc=$?: $(tail -1 "$run/pytest.log")"
      find "$run/tmp" -name '*.log' -exec cp {} "$run/" \; 2>/dev/null
      return ;;
  esac
  IFS=- read -r path size mix batch rest <<< "$spec"
  batch=${batch#b}
  local steps=20 resume="" extra=() standalone=() opt
  unset QWENVL_BENCH_PROFILE  # per job (lanes are subshells): `prof` sets it
  for opt in ${rest//-/ }; do
    case $opt in
      s[0-9]*) steps=${opt#s} ;;
      resume) resume=1; steps=36 ;;
      gbl) extra+=(--group-by-length) ;;
      w[0-9]*) extra+=(--workers "${opt#w}") ;;
      ddp|g1) ;;
      prof) export QWENVL_BENCH_PROFILE=6:7 ;;
      gcT) extra+=(--checkpointing true); standalone+=(--checkpointing true) ;;
      gc0) extra+=(--checkpointing false); standalone+=(--checkpointing false) ;;
      *) note "$tag $spec: unknown option $opt"; return 1 ;;
    esac
  done
  local model_dir; model_dir=$(model "$size") || { note "$tag $spec: model build FAILED"; return 1; }
  local data="$DATA_ROOT/bench-$mix/train.jsonl"
  rm -rf "$run" && mkdir -p "$run"
  cd "$run"  # Unsloth writes its compiled cache into the working directory: one per job
  if [ "$path" = B ]; then
    note "$tag $spec: standalone Unsloth, $steps steps"
    timeout "$(cap 330)" "$PY" "$ROOT/benchmarks/unsloth_standalone.py" --model "$model_dir" --data "$data" \
      --out "$run" --steps "$steps" --batch "$batch" ${standalone[@]+"${standalone[@]}"} > "$run/train-1.log" 2>&1
    note "$tag $spec rc=$?: $(grep -h '^unsloth_standalone' "$run/train-1.log" | tail -1 | cut -c1-300)"
    cd "$ROOT"; return
  fi
  local cfg_args=(--model "$model_dir" --run-dir "$run" --batch "$batch" --max-steps "$steps" ${extra[@]+"${extra[@]}"})
  case $path in
    A) cfg_args+=(--path plugin --loader "$([ -n "$CPU" ] && echo transformers || echo unsloth)" --data "$data") ;;
    T) cfg_args+=(--path plugin --loader transformers --data "$data") ;;
    C) cfg_args+=(--path native --data "$(native_data "$mix")") ;;
    *) note "$tag $spec: unknown path $path"; cd "$ROOT"; return 1 ;;
  esac
  [ -n "$resume" ] && cfg_args+=(--save-steps 12) || cfg_args+=(--save-steps 100000)
  [ -n "$CPU" ] && cfg_args+=(--cpu)
  "$PY" "$ROOT/benchmarks/train_config.py" "${cfg_args[@]}" > "$run/cfg.yml"
  if [ "$path" != C ]; then
    note "$tag $spec: preprocess"
    timeout "$(cap 240)" axolotl preprocess "$run/cfg.yml" > "$run/preprocess.log" 2>&1 \
      || { note "$tag $spec preprocess FAILED"; cd "$ROOT"; return 1; }
  fi
  if [ -z "$resume" ]; then
    note "$tag $spec: train $steps steps on $ngpu GPU(s)"
    train_once "$run" 1 "$ngpu" "$(cap 330)"
    note "$tag $spec rc=$?"
  else
    note "$tag $spec: train, killed after checkpoint-12"
    QWENVL_BENCH_JSON="$run/meter-1.json" QWENVL_BENCH_LABEL="$spec-1" \
      setsid axolotl train "$run/cfg.yml" $([ "$ngpu" -gt 1 ] && echo "--launcher accelerate -- --num_processes $ngpu") \
      > "$run/train-1.log" 2>&1 &
    local pid=$! waited=0 ckpt="$run/out/checkpoint-12" limit; limit=$(cap 240)
    while kill -0 "$pid" 2>/dev/null && [ $waited -lt "$limit" ]; do
      if [ -f "$ckpt/trainer_state.json" ] && [ -f "$ckpt/rng_state.pth" -o -f "$ckpt/rng_state_0.pth" ]; then
        sleep 3; break
      fi
      sleep 1; waited=$((waited + 1))
    done
    # SIGKILL every process of this run: the launcher's group, and the DDP workers, which
    # torch's elastic agent starts in sessions of their own (they all carry the config path).
    local pattern; pattern=$(printf '%s' "$run/cfg.yml" | sed 's/[][\/$*.^+?(){}|]/\\&/g')
    kill -KILL -- "-$pid" 2>/dev/null; pkill -KILL -f -- "$pattern" 2>/dev/null; wait "$pid" 2>/dev/null
    for _ in $(seq 30); do pgrep -f -- "$pattern" >/dev/null || break; sleep 1; done
    if [ ! -f "$ckpt/trainer_state.json" ]; then note "$tag $spec: no checkpoint-12"; cd "$ROOT"; return 1; fi
    note "$tag $spec: killed after checkpoint-12; resuming"
    train_once "$run" 2 "$ngpu" "$(cap 300)"
    note "$tag $spec resumed rc=$?"
  fi
  cd "$ROOT"
}

lane() {
  local index=$1 spec=$2 devices jobs
  if [[ $spec == *=* ]]; then devices=${spec%%=*}; jobs=${spec#*=}; else devices=$index; jobs=$spec; fi
  local tag="gpu${devices//,/+}"
  for j in $jobs; do job "$j" "$devices" "$tag"; done
  note "$tag lane done"
}

i=0
for spec in "$@"; do
  lane "$i" "$spec" &
  i=$((i + 1))
done
wait
note "all lanes done"

#!/usr/bin/env bash
# The steps of a lent GPU window (docs/recipes.md), one device call each, made back to back: a machine idle for
# 30 s goes back with everything on it. The package is not installed there; this runs it from src/.
#
#   bash scripts/gpu_window.sh carry K                    # call K (carry: .devdata/cifar100/carry.K): its chunks
#                                                         # into ~/data/cifar100; the last call joins cifar100.npz
#   bash scripts/gpu_window.sh train NAME [TRAIN FLAGS]   # bitnetcnn train on CIFAR-100 into ~/runs/NAME, then
#                                                         # bitnetcnn eval; what comes back is copied to $OUT/NAME
#
# A call brings back at most 8 files of at most 16 MiB each: a run brings four (best_ternary.bnc, metrics.csv,
# results.json, and train.log, which ends with the evaluation), so a call trains two runs at most and writes nothing
# else to $OUT. A larger file (a full-precision teacher) is cut into FILE.part.aa, .ab, ... (join with
# `cat FILE.part.* > FILE`; FILE.sha256 checks it). last.ckpt, args.json and metrics.png (redrawn from metrics.csv)
# stay there. They are copied every 30 s too, so a call killed at its limit brings back the last copies.
# Every 15 s train.log also gets a line of how busy the GPU is (`nvidia-smi`): a run that leaves it idle is bound by
# the host side of its steps (docs/recipes.md, the third window).
# BITNETCNN_WINDOW_DATA, _RUNS, _CARRY, _PART_MB, _COPY_S, _GPU_S and _SMI (the probe's command) change those
# (tests/test_scripts.py rehearses a window).
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$script")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
data="${BITNETCNN_WINDOW_DATA:-$HOME/data}"
runs="${BITNETCNN_WINDOW_RUNS:-$HOME/runs}"
carried="${BITNETCNN_WINDOW_CARRY:-.devdata/cifar100}"
part_mb="${BITNETCNN_WINDOW_PART_MB:-15}"
copy_s="${BITNETCNN_WINDOW_COPY_S:-30}"
gpu_s="${BITNETCNN_WINDOW_GPU_S:-15}"
smi="${BITNETCNN_WINDOW_SMI:-nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader}"
python="${PYTHON:-$(command -v python3 || command -v python || true)}"
[ -n "$python" ] || { echo "gpu_window.sh: no python3 or python on the PATH (set PYTHON)" >&2; exit 2; }

case "${1:-}" in
  carry)
    k="${2:?usage: gpu_window.sh carry K (the number of the carry folder)}"
    mkdir -p "$data/cifar100"
    cp "$carried/carry.$k"/* "$data/cifar100/"
    folders=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["carry_folders"])' \
      "$data/cifar100/manifest.json")
    echo "carry $k of $folders: $(ls "$data/cifar100" | wc -l) files in $data/cifar100"
    if [ "$k" -eq $((folders - 1)) ]; then
      "$python" scripts/npz_chunks.py join "$data/cifar100" "$data/cifar100.npz"
    fi
    ;;
  train)
    name="${2:?usage: gpu_window.sh train NAME [TRAIN FLAGS]}"
    shift 2
    run="$runs/$name"
    back="${OUT:?OUT must name the folder whose files come back}/$name"
    # copies are made beside $OUT and moved in whole: a copy cut short by the call's end never comes back, and no
    # temporary file takes one of the eight places
    staging="$(dirname "$OUT")/.window-staging/$name"
    mkdir -p "$back" "$staging"
    bring_back() {  # on any exit, so a failed run comes back too: its metrics and log say how far it got
      for f in "$run"/{best_ternary.bnc,metrics.csv,results.json,train.log}; do
        [ -f "$f" ] || continue
        name="$(basename "$f")"
        if [ "$(stat -c %s "$f")" -gt $((part_mb * 1024 * 1024)) ]; then
          rm -f "$back/$name".part.*  # an earlier copy's parts; FILE.sha256 tells a copy cut short
          split -b "${part_mb}M" "$f" "$back/$name.part."
          sha256sum "$f" | cut -d" " -f1 > "$back/$name.sha256"
        else
          cp "$f" "$staging/$name" && mv -f "$staging/$name" "$back/$name"  # whole, even if killed
        fi
      done
    }
    # a call cut at its limit by SIGKILL runs no trap, but what is already in $OUT comes back: copy as it goes
    copier="" sampler=""
    stop() { [ -z "$1" ] || { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null || true; }; }
    finish() {  # the copier stopped first, so the last copy is whole; the call keeps the run's exit status
      local status=$?
      stop "$sampler"
      stop "$copier"
      bring_back
      exit "$status"
    }
    trap finish EXIT
    mkdir -p "$run"
    ( while sleep "$copy_s"; do bring_back; done ) >/dev/null 2>&1 &
    copier=$!
    if command -v "${smi%% *}" >/dev/null 2>&1; then  # appended beside tee's lines: each a write of its own
      ( while sleep "$gpu_s"; do echo "gpu busy, memory at $(date +%T): $($smi 2>&1 | head -n 1)"; done \
        >> "$run/train.log" ) &
      sampler=$!
    fi
    "$python" -m bitnetcnn train --dataset cifar100 --data-dir "$data" --out "$run" --no-progress "$@" \
      2>&1 | tee -a "$run/train.log"
    stop "$sampler"  # the log ends with the evaluation
    sampler=""
    "$python" -m bitnetcnn eval "$run/best_ternary.bnc" --data-dir "$data" 2>&1 | tee -a "$run/train.log"
    ;;
  *)
    sed -n '2,12p' "$script" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

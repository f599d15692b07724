#!/usr/bin/env bash
# The CUDA paths, checked once on a GPU machine, and the speed benches measured there. Nothing here runs in CI
# (CI has no GPU); run it by hand where a GPU is, with spinegrade importable (installed, or src/ on PYTHONPATH):
#
#     bash bench/gpu_check.sh WORK_DIR [LOG]
#
# Steps, each under its own time limit so that one that hangs cannot take the rest with it:
#   1. the machine: torch, CUDA, the GPU;
#   2. `spinegrade demo --device cuda`: synthesise, prepare, train both stages with mixed precision and loader
#      processes, evaluate, predict: the whole job on the GPU, its score against the CPU's (README);
#   3. the demo's run predicting the same studies on cuda and on the CPU: the two submissions must agree
#      (mixed precision is only used in training; prediction runs in float32 on both);
#   4. bench_predict on cuda (the localisers' batching across studies, per-study time);
#   5. bench_train_throughput on cuda (images/s of each registered network, mixed precision);
#   6. bench_startup (cold predict against its pipeline) and bench_prepare (workers against the pydicom loop),
#      on this machine's cores;
#   7. bench/scale.py on cuda over the demo's cohort: prepare, training crops/s with the loader's share of a
#      step, batch predict studies/s, at 10, 40 and 120 studies.
# SKIP="NAME NAME" leaves those steps out (step names: machine demo predict-cuda predict-cpu compare bench_predict
# bench_train_throughput bench_startup bench_prepare scale).
# The real-study steps need ../shared/realdata beside the checkout, as the benches do; they skip without it.
set -uo pipefail
W=${1:?usage: gpu_check.sh WORK_DIR [LOG]}
LOG=${2:-/dev/null}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$W"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, print its status and wall time
  local name=$1 limit=$2; shift 2
  case " ${SKIP:-} " in *" $name "*) echo "=== $name: skipped (SKIP)"; return 0;; esac
  echo "=== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}

step machine 60 "$PY" -c '
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cpus", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, round(p.total_memory / 2**30), "GiB")'

DEMO=$W/demo
step demo 280 "$PY" -m spinegrade demo --out "$DEMO" --device cuda --workers 8
RUN=$DEMO/run
if [ -f "$RUN/config.json" ]; then
  # the same studies on both devices: 12 of the demo's synthetic studies, and the real ones where present
  PICK=$W/pick; mkdir -p "$PICK"
  for s in $(ls "$DEMO/data/train_images" | head -12); do ln -sfn "$DEMO/data/train_images/$s" "$PICK/$s"; done
  REAL=$HERE/../shared/realdata/rsna2024_dicom_train_2studies/train_images
  [ -d "$REAL" ] && for s in "$REAL"/*/; do ln -sfn "${s%/}" "$PICK/$(basename "$s")"; done
  step predict-cuda 90 "$PY" -m spinegrade predict "$PICK" --model "$RUN" --out "$W/pred_cuda" --device cuda
  step predict-cpu 120 "$PY" -m spinegrade predict "$PICK" --model "$RUN" --out "$W/pred_cpu" --device cpu
  step compare 30 "$PY" - "$W/pred_cuda/submission.csv" "$W/pred_cpu/submission.csv" <<'EOF'
import sys
import numpy as np
import pandas as pd
a, b = (pd.read_csv(p).set_index("row_id").sort_index() for p in sys.argv[1:3])
assert list(a.index) == list(b.index), "the two submissions grade different rows"
d = np.abs(a.to_numpy() - b.to_numpy())
same = (a.to_numpy().argmax(1) == b.to_numpy().argmax(1)).mean()
print(f"{len(a)} rows: largest probability difference {d.max():.2e}, mean {d.mean():.2e}; "
      f"same most likely grade in {100 * same:.1f} % of rows")
sys.exit(0 if d.max() < 1e-3 else 1)  # float32 on both (no TF32): 3.4e-5 on an H200
EOF
  MODEL=(--model "$RUN")
else
  echo "no demo run: the benches below train their own or use the bundled model"
  MODEL=()
fi

step bench_predict 120 "$PY" "$HERE/bench/bench_predict.py" "${MODEL[@]}" --device cuda
step bench_train_throughput 60 "$PY" "$HERE/bench/bench_train_throughput.py" --device cuda --steps 20 --batch 64
step bench_startup 90 "$PY" "$HERE/bench/bench_startup.py" "${MODEL[@]}" --repeat 3
step bench_prepare 120 "$PY" "$HERE/bench/bench_prepare.py" --studies 10 --repeat 2
if [ -f "$RUN/config.json" ]; then  # the demo's cohort is scale.py's (same generator, seed 2024): none made again
  mkdir -p "$W/scale" && ln -sfn "$DEMO/data" "$W/scale/cohort-seed2024"
  SCALE=(--keep "$W/scale" --seed 2024 --sizes 10 40 120)
else
  SCALE=(--sizes 10 40)
fi
step scale 240 "$PY" "$HERE/bench/scale.py" --device cuda --workers 8 --loader-workers 8 "${MODEL[@]}" "${SCALE[@]}"
echo "=== done"

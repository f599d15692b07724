#!/usr/bin/env bash
# Create .venv (if missing) and install spinegrade with its train and test extras (torch, to train and to check the
# ONNX networks against it; `pip install .` alone grades without torch). Idempotent and quick when done once.
# TORCH_SPEC overrides the torch requirement (e.g. TORCH_SPEC="torch==2.5.1" or a CUDA build on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ -z "${TORCH_SPEC:-}" ]; then
  # A CPU build of torch 2.13.0 lies on disk on the team's machines: use it there (seconds, not GBs).
  if ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1; then TORCH_SPEC="torch==2.13.0"; else TORCH_SPEC="torch>=2.2"; fi
fi
python -c "import torch" >/dev/null 2>&1 || python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e ".[train,test]"

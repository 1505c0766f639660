#!/usr/bin/env bash
# Create .venv (if needed) and install splitpriv with its dev tools, the cluster extra (Ray) and
# the tracking extra (TensorBoard, splitpriv train --log tensorboard).
# The torch 2.13.0 CPU wheel goes in first so that no multi-GB CUDA build is pulled on a CPU
# machine; on a GPU machine set SPLITPRIV_TORCH (e.g. "torch==2.13.0" from the CUDA index) or
# install your own torch first: any release the project's range admits is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "${SPLITPRIV_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet -e '.[dev,cluster,tracking]'

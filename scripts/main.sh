#!/usr/bin/env bash
# Set up (idempotent), then the main job: reproduce the paper's split baseline on a laptop budget
# (pass --epochs/--seeds to change it; the README's table used the full budget it names).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/reproduce_baseline.py --epochs 30 --seeds 2 --epochs-inter-patient 10 "$@"

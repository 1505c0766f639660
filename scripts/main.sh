#!/usr/bin/env bash
# Set up (idempotent), then the main job: the activation-DP trade-off study
# (studies/dp_tradeoff.py: paper-mode and formal DP, accuracy, leakage and inversion, 3 seeds,
# 30 epochs). Extra flags pass through, e.g. --quick for a smoke run of a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python studies/dp_tradeoff.py "$@"

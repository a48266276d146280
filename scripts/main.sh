#!/usr/bin/env bash
# The main job on the embedded offline default: installs what it needs (idempotently), then
# runs the cost sweep. Usage: scripts/main.sh [WORKDIR] [extra flags, e.g. --config.seeds=1]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${SE_VENV:-.venv}"
WORKDIR="${1:-workdir}"
shift || true
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/python" -m scalable_elicitation.main \
  --config=configs/cost_sweep.py --workdir="$WORKDIR" "$@"

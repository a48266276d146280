#!/usr/bin/env bash
# Run a sweep on this host with all of its devices (one JAX process sees every local GPU/TPU
# chip, or the CPU). Any number of copies may share a WORKDIR: locks keep runs exactly-once.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh --config=configs/NAME.py[:ARG] --workdir=DIR [launch.sweep flags...]

Runs `python -m launch.sweep` on this host with all local devices. Every flag is passed on:
  --config.KEY=VALUE   config overrides        --dry_run      list runs and their status
  --shard=I/N          run the I-th of N slices (round-robin over the plan)

Environment:
  PYTHON        interpreter to use (default: python3, or .venv/bin/python in the repo)
  SE_WORKERS    worker processes to start on this host (default 1); with more than one,
                each is pinned to its own GPU when CUDA devices are listed in SE_GPUS
  SE_GPUS       comma-separated GPU ids for SE_WORKERS > 1 (e.g. 0,1,2,3)

Example:
  launch/local.sh --config=configs/cost_sweep.py:smoke --workdir=/tmp/smoke --dry_run
  launch/local.sh --config=configs/cost_sweep.py --workdir="$HOME/sweeps/cost" \
      --config.prices.weak=0.01
USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
workers="${SE_WORKERS:-1}"
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: SE_WORKERS=$workers must be a positive integer" >&2
  exit 2
fi

cd "$repo"
if [[ "$workers" -eq 1 ]]; then
  exec "$python" -m launch.sweep "$@"
fi

IFS=',' read -r -a gpus <<< "${SE_GPUS:-}"
pids=()
for ((i = 0; i < workers; i++)); do
  if [[ ${#gpus[@]} -gt 0 ]]; then
    CUDA_VISIBLE_DEVICES="${gpus[i % ${#gpus[@]}]}" "$python" -m launch.sweep "$@" &
  else
    "$python" -m launch.sweep "$@" &
  fi
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"

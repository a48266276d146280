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
  --lock_dir=DIR       run locks apart from the workdir (see README, "Launching sweeps at scale")
Paths resolve where you stand: a relative --workdir is relative to your current folder, and a
relative --config that is not there is looked up in this repository.

Environment:
  PYTHON        interpreter to use (default: python3, or .venv/bin/python in the repo)
  SE_WORKERS    worker processes to start on this host (default 1). Each worker gets its own
                GPU(s): never more workers than GPUs (JAX preallocates most of a GPU's memory)
  SE_GPUS       comma-separated GPU ids to spread the workers over (default: CUDA_VISIBLE_DEVICES,
                else every GPU nvidia-smi lists), dealt round-robin to the workers
  SE_SHARE_DEVICES=1  allow more workers than GPUs (GPU memory preallocation is then turned off),
                or several workers on a host without GPUs (on CPU they split the cores; TPU
                chips cannot be shared between processes)

Example:
  launch/local.sh --config=configs/cost_sweep.py:smoke --workdir=/tmp/smoke --dry_run
  launch/local.sh --config=configs/cost_sweep.py --workdir="$HOME/sweeps/cost" \
      --config.prices.weak=0.01
  SE_WORKERS=4 launch/local.sh --config=configs/cost_sweep.py:lora --workdir=sweeps/lora
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

# The worker runs where the user stands, so a relative --workdir lands there; the repository
# is put on the import path instead, and a relative config missing here is taken from it.
args=()
for arg in "$@"; do
  if [[ "$arg" == --config=* ]]; then
    spec="${arg#--config=}"
    file="${spec%%:*}"
    if [[ "$file" != /* && ! -e "$file" && -e "$repo/$file" ]]; then
      arg="--config=$repo/$spec"
    fi
  fi
  args+=("$arg")
done
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$workers" -eq 1 ]]; then
  exec "$python" -m launch.sweep "${args[@]}"
fi

gpus=()
if [[ -n "${SE_GPUS:-}" ]]; then
  IFS=',' read -r -a gpus <<< "$SE_GPUS"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=',' read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1; then
  n="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  for ((g = 0; g < n; g++)); do gpus+=("$g"); done
fi
share="${SE_SHARE_DEVICES:-0}"
if [[ ${#gpus[@]} -eq 0 && "$share" != 1 ]]; then
  echo "local.sh: SE_WORKERS=$workers but no GPU to give each worker; one worker already uses" \
    "every local device. Set SE_SHARE_DEVICES=1 to run $workers workers side by side anyway." >&2
  exit 2
fi
if [[ ${#gpus[@]} -gt 0 && "$workers" -gt ${#gpus[@]} && "$share" != 1 ]]; then
  echo "local.sh: SE_WORKERS=$workers is more than the ${#gpus[@]} GPU(s) (${gpus[*]}); each" \
    "worker preallocates most of its GPU's memory. Use SE_WORKERS<=${#gpus[@]}, or" \
    "SE_SHARE_DEVICES=1 to share GPUs with preallocation off." >&2
  exit 2
fi
if [[ "$share" == 1 ]]; then
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi

pids=()
for ((i = 0; i < workers; i++)); do
  if [[ ${#gpus[@]} -eq 0 ]]; then
    "$python" -m launch.sweep "${args[@]}" &
  else
    # worker i gets every workers-th GPU, starting at its own: all GPUs are used, none twice
    # unless sharing was asked for
    mine=()
    for ((g = i % ${#gpus[@]}; g < ${#gpus[@]}; g += workers)); do mine+=("${gpus[g]}"); done
    CUDA_VISIBLE_DEVICES="$(IFS=','; echo "${mine[*]}")" "$python" -m launch.sweep "${args[@]}" &
  fi
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"

#!/usr/bin/env bash
# Create (or reuse) a Cloud TPU VM, install this repository on every worker, and run the same
# launch.sweep command on all workers at once (one JAX process per worker: multi-host on pods).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh --config=configs/NAME.py[:ARG] --workdir=DIR [launch.sweep flags...]
       launch/tpu_vm.sh --help

Environment (required):
  TPU_NAME        name of the TPU VM to create or reuse
  TPU_ZONE        zone, e.g. us-central2-b
  TPU_TYPE        accelerator type when creating, e.g. v4-8 or v5litepod-16
Environment (optional):
  TPU_PROJECT     GCP project (default: gcloud's configured project)
  TPU_VERSION     runtime version when creating (default: tpu-ubuntu2204-base)
  TPU_SPOT=1      create a Spot VM
  SE_REMOTE_DIR   install folder on the workers (default: scalable_elicitation)
  SE_SKIP_INSTALL=1  reuse the code already installed on the workers

DIR should be a bucket path or a disk that every worker sees (records and locks live there),
e.g. a gcsfuse mount; on a single-host slice a local folder works.

Example:
  TPU_NAME=se-v4 TPU_ZONE=us-central2-b TPU_TYPE=v4-8 \
    launch/tpu_vm.sh --config=configs/cost_sweep.py:model=smollm2,lora \
      --workdir=/mnt/sweeps/cost --config.dtype=bfloat16
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
missing=()
for var in TPU_NAME TPU_ZONE TPU_TYPE; do
  if [[ -z "${!var:-}" ]]; then missing+=("$var"); fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "tpu_vm.sh: set ${missing[*]} (see --help)" >&2
  exit 2
fi
if ! command -v gcloud >/dev/null 2>&1; then
  echo "tpu_vm.sh: gcloud not found; install the Google Cloud CLI" >&2
  exit 2
fi

gc=(gcloud compute tpus tpu-vm)
where=(--zone="$TPU_ZONE")
if [[ -n "${TPU_PROJECT:-}" ]]; then where+=(--project="$TPU_PROJECT"); fi
remote_dir="${SE_REMOTE_DIR:-scalable_elicitation}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if "${gc[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_vm.sh: reusing TPU VM $TPU_NAME" >&2
else
  echo "tpu_vm.sh: creating TPU VM $TPU_NAME ($TPU_TYPE)" >&2
  create=(--accelerator-type="$TPU_TYPE" --version="${TPU_VERSION:-tpu-ubuntu2204-base}")
  if [[ "${TPU_SPOT:-0}" == 1 ]]; then create+=(--spot); fi
  "${gc[@]}" create "$TPU_NAME" "${where[@]}" "${create[@]}"
fi

if [[ "${SE_SKIP_INSTALL:-0}" != 1 ]]; then
  archive="$(mktemp -t se-src.XXXXXX.tar.gz)"
  trap 'rm -f "$archive"' EXIT
  git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  "${gc[@]}" scp "$archive" "$TPU_NAME":se-src.tar.gz --worker=all "${where[@]}"
  install="set -e; rm -rf $(printf '%q' "$remote_dir"); mkdir -p $(printf '%q' "$remote_dir")"
  install+="; tar -xzf se-src.tar.gz -C $(printf '%q' "$remote_dir")"
  install+="; cd $(printf '%q' "$remote_dir") && python3 -m venv .venv"
  install+=" && .venv/bin/pip install -q -e '.[tpu]'"
  "${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$install"
fi

args=""
for arg in "$@"; do args+=" $(printf '%q' "$arg")"; done
run="cd $(printf '%q' "$remote_dir") && SE_MULTIHOST=1 .venv/bin/python -m launch.sweep$args"
echo "tpu_vm.sh: on every worker: $run" >&2
"${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$run"

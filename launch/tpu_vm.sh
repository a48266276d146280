#!/usr/bin/env bash
# Create (or reuse) a Cloud TPU VM, install this repository on every worker, and start the same
# launch.sweep command on all workers at once (one JAX process per worker: multi-host on pods),
# detached from the ssh session, with its output in a log on each worker.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh --config=configs/NAME.py[:ARG] --workdir=DIR [launch.sweep flags...]
       launch/tpu_vm.sh --help

Environment (required):
  TPU_NAME        name of the TPU VM to create or reuse
  TPU_ZONE        zone, e.g. us-central2-b
  TPU_TYPE        accelerator type when creating: v4-8, v5litepod-16, v5p-8, v6e-8, ...
Environment (optional):
  TPU_PROJECT     GCP project (default: gcloud's configured project)
  TPU_VERSION     runtime version when creating (default from TPU_TYPE, as Google's table:
                  v2/v3/v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                  v6e v2-alpha-tpuv6e)
  TPU_SPOT=1      create a Spot VM
  SE_REMOTE_DIR   install folder on the workers, relative to the home (default: scalable_elicitation)
  SE_SKIP_INSTALL=1  reuse the code already installed on the workers
  SE_SHIP_DIRTY=1    ship the working tree with its uncommitted changes (by default the install
                  ships commit HEAD and refuses while there are uncommitted changes)
  SE_PREFLIGHT_PYTHON  the Python (with the tpu extra) that runs the preflight (default python3)
  SE_SKIP_PREFLIGHT=1  launch without the preflight

Preflight: before any VM is created, launch/preflight.py compiles the sweep's programs for
TPU_TYPE on this machine (CPU only; needs the tpu extra) and stops the launch when one does not
fit the TPU's memory (exit 3) or JAX cannot compile for it (exit 2). See docs/preflight.md.

Install: on every worker, a Python >= 3.11 (fetched with uv when the image's python3 is older)
and the same set-up as scripts/bootstrap.sh with the tpu extra (package, jax[tpu], offline
assets), in SE_REMOTE_DIR/.venv (launch/tpu_install.sh).

Run: the sweep starts detached on every worker; its output goes to
SE_REMOTE_DIR/logs/sweep-TIME.log (and logs/latest.log) on each worker. The script prints the
command that follows worker 0's log and the one that stops the sweep.

DIR must be an absolute path that every worker sees: a Filestore (NFS) share mounted on each
worker holds records, checkpoints and locks. A bucket mounted with gcsfuse holds records and
checkpoints (mount it with --rename-dir-limit or use a hierarchical-namespace bucket, and
--metadata-cache-ttl-secs=0), but not locks: add --lock_dir=/some/local/dir when this one
slice is the only job on the sweep, or --lock_dir on NFS when several share it. On a
single-host slice a local folder works.

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

workdir=""
prev=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
  if [[ "$prev" == --workdir ]]; then workdir="$arg"; fi
  prev="$arg"
done
if [[ -z "$workdir" ]]; then
  echo "tpu_vm.sh: --workdir=DIR is required (see --help)" >&2
  exit 2
fi
if [[ "$workdir" == *://* ]]; then
  echo "tpu_vm.sh: --workdir=$workdir: mount the bucket on every worker (gcsfuse) and pass" \
    "the mount's path, with --lock_dir off the bucket (see --help)" >&2
  exit 2
fi
if [[ "$workdir" != /* ]]; then
  echo "tpu_vm.sh: --workdir=$workdir must be an absolute path that every worker sees" >&2
  exit 2
fi

# Google's runtime table: the base image is for v4 and older; newer generations have their own
runtime_for() {
  case "$1" in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

gc=(gcloud compute tpus tpu-vm)
where=(--zone="$TPU_ZONE")
if [[ -n "${TPU_PROJECT:-}" ]]; then where+=(--project="$TPU_PROJECT"); fi
remote_dir="${SE_REMOTE_DIR:-scalable_elicitation}"
rdir="$(printf '%q' "$remote_dir")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The preflight (launch/preflight.py, docs/preflight.md): the sweep's programs compiled for
# TPU_TYPE on this machine's CPU before any VM exists; a config that does not fit, or a JAX
# that cannot compile for TPUs, stops the launch here with the preflight's own lines.
if [[ "${SE_SKIP_PREFLIGHT:-0}" != 1 ]]; then
  pre=()
  for arg in "$@"; do
    case "$arg" in --config=*|--config.*) pre+=("$arg") ;; esac
  done
  (cd "$repo" && JAX_PLATFORMS=cpu "${SE_PREFLIGHT_PYTHON:-python3}" -m launch.preflight \
    "${pre[@]}" --target="$TPU_TYPE") && status=0 || status=$?
  if [[ "$status" -ne 0 ]]; then
    echo "tpu_vm.sh: the preflight for $TPU_TYPE failed (exit $status, above); no VM was" \
      "created. Fix the config, or set SE_SKIP_PREFLIGHT=1 to launch anyway" >&2
    exit "$status"
  fi
fi

# Pack the code first, so that a refusal comes before a VM is created.
archive=""
if [[ "${SE_SKIP_INSTALL:-0}" != 1 ]]; then
  if ! git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    echo "tpu_vm.sh: $repo is not a git checkout; the install ships a commit" >&2
    exit 2
  fi
  changes="$(git -C "$repo" status --porcelain --untracked-files=normal)"
  if [[ -n "$changes" && "${SE_SHIP_DIRTY:-0}" != 1 ]]; then
    {
      echo "tpu_vm.sh: uncommitted changes would not reach the workers (the install ships"
      echo "commit HEAD); commit them, or set SE_SHIP_DIRTY=1 to ship the working tree:"
      echo "$changes" | head -n 20
    } >&2
    exit 2
  fi
  archive="$(mktemp -t se-src.XXXXXX)"
  trap 'rm -f "$archive"' EXIT
  if [[ -n "$changes" ]]; then
    echo "tpu_vm.sh: shipping the working tree with its uncommitted changes" >&2
    # tracked files as they are now, plus untracked files git does not ignore
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done |
      tar --null -T - -czf "$archive")
  else
    git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  fi
fi

if "${gc[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_vm.sh: reusing TPU VM $TPU_NAME" >&2
else
  version="${TPU_VERSION:-}"
  if [[ -z "$version" ]] && ! version="$(runtime_for "$TPU_TYPE")"; then
    echo "tpu_vm.sh: no default runtime for TPU_TYPE=$TPU_TYPE; set TPU_VERSION (see" \
      "https://cloud.google.com/tpu/docs/runtimes)" >&2
    exit 2
  fi
  echo "tpu_vm.sh: creating TPU VM $TPU_NAME ($TPU_TYPE, runtime $version)" >&2
  create=(--accelerator-type="$TPU_TYPE" --version="$version")
  if [[ "${TPU_SPOT:-0}" == 1 ]]; then create+=(--spot); fi
  "${gc[@]}" create "$TPU_NAME" "${where[@]}" "${create[@]}"
fi

# On a worker: fail while a sweep started earlier still runs there (it holds the TPU chips).
pidfile="$rdir/logs/sweep.pid"
busy="pid=\$(cat $pidfile 2>/dev/null || true); if [ -n \"\$pid\" ] && grep -qs launch.sweep /proc/\$pid/cmdline; then echo \"\$(hostname): a sweep is still running (pid \$pid); stop it first\" >&2; exit 3; fi"

if [[ -n "$archive" ]]; then
  "${gc[@]}" scp "$archive" "$TPU_NAME":se-src.tar.gz --worker=all "${where[@]}"
  # replace the code, keep the venv (bootstrap is idempotent) and the logs
  install="set -e; $busy; mkdir -p $rdir"
  install+="; find $rdir -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +"
  install+="; tar -xzf se-src.tar.gz -C $rdir; rm -f se-src.tar.gz"
  install+="; bash $rdir/launch/tpu_install.sh"
  "${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$install"
fi

args=""
for arg in "$@" --config.platform=tpu; do args+=" $(printf '%q' "$arg")"; done
log="sweep-$(date +%Y%m%d-%H%M%S).log"
# setsid + nohup + redirections: the sweep outlives the ssh session; it writes its own pid
run="set -e; $busy; cd $rdir; mkdir -p logs; ln -sfn $log logs/latest.log"
run+="; SE_MULTIHOST=1 nohup setsid bash -c 'echo \$\$ > logs/sweep.pid; exec \"\$@\"' sweep"
run+=" .venv/bin/python -m launch.sweep$args > logs/$log 2>&1 < /dev/null &"
run+=" echo \"\$(hostname): sweep started, log $remote_dir/logs/$log\""
echo "tpu_vm.sh: on every worker: cd $remote_dir && SE_MULTIHOST=1 .venv/bin/python -m launch.sweep$args" >&2
"${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$run"

ssh_cmd="gcloud compute tpus tpu-vm ssh $TPU_NAME ${where[*]}"
echo "tpu_vm.sh: the sweep runs detached on every worker. Follow worker 0:" >&2
echo "  $ssh_cmd --worker=0 --command='tail -n +1 -F $remote_dir/logs/latest.log'" >&2
echo "Stop it on every worker:" >&2
echo "  $ssh_cmd --worker=all --command='kill \$(cat $remote_dir/logs/sweep.pid)'" >&2

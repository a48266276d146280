#!/usr/bin/env bash
# Set-up on one TPU VM worker, run by launch/tpu_vm.sh from the unpacked repository: a Python
# >= 3.11 (the TPU images run Ubuntu 22.04, whose python3 is 3.10), then the same set-up as
# scripts/bootstrap.sh with the tpu extra (package, jax[tpu], offline assets). Idempotent.
#
# Environment: PYTHON (an interpreter >= 3.11 to use), SE_VENV (default .venv here),
# SE_EXTRAS (default tpu,analysis).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

new_enough() {  # whether interpreter $1 runs and is Python >= 3.11
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

py=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
    py="$(command -v "$candidate")"
    break
  fi
done
if [[ -z "$py" ]]; then
  # no root needed: uv installs a standalone CPython into the user's home
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null 2>&1; then
    echo "tpu_install.sh: no Python >= 3.11 on $(hostname); installing uv to fetch one" >&2
    python3 -m pip install --user -q uv || curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
  uv python install 3.11
  py="$(uv python find 3.11)"
fi
if ! new_enough "$py"; then
  echo "tpu_install.sh: $py is not Python >= 3.11" >&2
  exit 1
fi

venv="${SE_VENV:-.venv}"
if [[ -x "$venv/bin/python" ]] && ! new_enough "$venv/bin/python"; then
  echo "tpu_install.sh: $venv was made with an older Python; making it again with $py" >&2
  rm -rf "$venv"
fi
PYTHON="$py" SE_VENV="$venv" SE_EXTRAS="${SE_EXTRAS:-tpu,analysis}" bash scripts/bootstrap.sh
echo "tpu_install.sh: $(hostname): $("$venv/bin/python" --version) in $PWD/$venv" >&2

#!/usr/bin/env bash
# The test command: installs what it needs (idempotently), then runs the default test suite
# on CPU with 8 fake devices (tests/conftest.py sets them). Extra arguments go to pytest.
#
# Two environments: the default one (.venv, or $SE_VENV: the one scripts/main.sh uses) and one
# with the tpu extra (.venv-tpu, or $SE_TPU_VENV) for tests/test_preflight.py, which compiles
# the sweep's real programs for TPU topologies on this CPU (docs/preflight.md). libtpu stays
# out of the main job's environment: with it installed, JAX on a machine without a TPU tries
# the TPU backend first and prints an initialisation error, and the CPU host-memory setting
# (hostmem) no longer applies to `platform=auto`. SE_TPU_VENV=none skips the second run (the
# preflight tests then skip in the first, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${SE_VENV:-.venv}"
TPU_VENV="${SE_TPU_VENV:-.venv-tpu}"
if [ "$TPU_VENV" != none ]; then
  SE_VENV="$TPU_VENV" SE_EXTRAS=test,analysis,tpu bash scripts/bootstrap.sh
fi
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
set +e
# Two workers (the machine has 2 cores; many tests are compile- or Python-bound), one test
# file per worker so module-scoped fixtures are built once.
"$VENV/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
rc=$?
rc_tpu=0
if [ "$TPU_VENV" != none ]; then
  echo "TPU ahead-of-time tests (tests/test_preflight.py, the tpu extra in $TPU_VENV):"
  # compile-only devices cannot load cached executables: the persistent cache off
  JAX_ENABLE_COMPILATION_CACHE=false "$TPU_VENV/bin/python" -m pytest -q -n 2 --dist load \
    tests/test_preflight.py
  rc_tpu=$?
fi
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ] || [ "$rc_tpu" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$rc_tpu"

#!/usr/bin/env bash
# The test command: installs what it needs (idempotently), then runs the default test suite
# on CPU with 8 fake devices (tests/conftest.py sets them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# the tpu extra (libtpu) too: tests/test_preflight.py compiles the sweep's real programs for
# TPU topologies on this CPU (docs/preflight.md); without it those tests skip, saying why
export SE_EXTRAS="${SE_EXTRAS:-test,analysis,tpu}"
bash scripts/bootstrap.sh
VENV="${SE_VENV:-.venv}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
set +e
# Two workers (the machine has 2 cores; many tests are compile- or Python-bound), one test
# file per worker so module-scoped fixtures are built once.
"$VENV/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"

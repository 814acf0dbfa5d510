#!/usr/bin/env bash
# The full randomized soak (CI runs a reduced one): PYBRIDGE_SOAK_OPS operations (default 400),
# against the test plugin that scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYBRIDGE_E2E=1 PYBRIDGE_SOAK_OPS=${PYBRIDGE_SOAK_OPS:-400}
exec python3 -m pytest -s tests/e2e/test_soak.py "$@"

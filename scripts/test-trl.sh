#!/usr/bin/env bash
# Run the TRL adapter's contract tests (tests/trl/test_trl_contract.py) on one TRL release, in a side venv
# built with that release's pins (scripts/trl_matrix.py --print-pins RELEASE): CPU torch first, then TRL and
# the transformers/accelerate/datasets it runs with, then grpo-check itself with --no-deps.
# Usage: scripts/test-trl.sh RELEASE [extra pytest args]     e.g. scripts/test-trl.sh 0.14.0
# The venv is .venv-trl-RELEASE (kept between runs; delete it to rebuild). The full matrix of release lines
# is scripts/trl_matrix.py (docs/trl-versions.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE="${1:?usage: scripts/test-trl.sh RELEASE [pytest args], e.g. 0.14.0}"
shift
PINS="$(python3 scripts/trl_matrix.py --print-pins "$RELEASE")"
VENV=".venv-trl-$RELEASE"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  # shellcheck disable=SC2086  # PINS is a list of requirement specifiers
  "$VENV/bin/pip" install -q "trl==$RELEASE" $PINS
  "$VENV/bin/pip" install -q -e . --no-deps
fi
"$VENV/bin/python" -c "import trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__)"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/trl/test_trl_contract.py "$@"

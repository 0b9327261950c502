#!/usr/bin/env bash
# Build a side venv with the TRL 0.17 line (the 0.x internals grpo-check also hooks) and run the TRL adapter
# tests there. Usage: scripts/test-trl017.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-trl017
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0 trl==0.17.0 transformers==4.51.3 "accelerate<1.8" "datasets<4" \
      safetensors typer rich pandas pyyaml hypothesis pytest matplotlib tokenizers
  "$VENV/bin/pip" install -q -e . --no-deps
fi
"$VENV/bin/python" -c "import trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/trl/test_trl017.py "$@"

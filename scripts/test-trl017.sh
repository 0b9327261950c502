#!/usr/bin/env bash
# The TRL adapter's contract tests on TRL 0.17.0 (kept for existing commands: scripts/test-trl.sh RELEASE runs
# any release). Usage: scripts/test-trl017.sh [extra pytest args]
exec "$(dirname "$0")/test-trl.sh" 0.17.0 "$@"

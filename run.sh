#!/usr/bin/env bash
# FitChat's two commands (see README.md):
#   ./run.sh [app options]        set up on first use, then launch the app on the embedded model
#   ./run.sh test [pytest args]   set up (with test tools), then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "test" ]; then
  shift
  bash scripts/setup.sh --test
  mkdir -p test-artifacts
  exec .venv/bin/python -m pytest "$@"
fi
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"

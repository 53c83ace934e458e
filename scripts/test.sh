#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh), then run the whole test suite on CPU.
#
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"

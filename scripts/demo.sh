#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh), then run the demo: a teacher service on loopback and two
# student jobs sharing it (OPD vs TrOPD) on the built-in world. CPU only, a few minutes.
#
#   bash scripts/demo.sh [tropd-train demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/tropd-train demo "$@"

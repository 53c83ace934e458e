#!/usr/bin/env bash
# A separate environment for the TRL peer row of the quality benchmark (benchmarks/trl_peer.py):
# TRL is a benchmark-only dependency, never one of tropd's. Creates $TRL_VENV (default
# /work/trl-venv, or .trl-venv beside the repo's .venv when /work is absent) with the same torch
# as the project (CPU build, from the configured package index), TRL, and tropd itself (for the
# built-in world, its verifier and its eval set). Safe to run again.
#
#   bash benchmarks/setup_trl_env.sh && $TRL_VENV/bin/python benchmarks/trl_peer.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
default_venv=/work/trl-venv
[ -d /work ] || default_venv=.trl-venv
TRL_VENV=${TRL_VENV:-$default_venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TRL_SPEC=${TRL_SPEC:-trl}

[ -x "$TRL_VENV/bin/python" ] || "$PYTHON" -m venv "$TRL_VENV"
pip_q() { "$TRL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# shellcheck disable=SC2086
"$TRL_VENV/bin/python" -c "import torch" >/dev/null 2>&1 || pip_q $TORCH_SPEC
pip_q -e ".[trainer]" "$TRL_SPEC"
"$TRL_VENV/bin/python" -c 'import torch, transformers, trl; print("[trl env]", "torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'

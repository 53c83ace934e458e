#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at .venv with everything installed:
# the teacher, the trainer, and the development tools. Safe to run again.
#
#   bash scripts/setup.sh
#
# TORCH_SPEC picks the torch build; the default is the CPU wheel used for the demo and tests.
# On a CUDA machine, e.g.: TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip_q() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_q $TORCH_SPEC
fi
echo "[setup] installing tropd (editable) with the dev extra"
pip_q -e ".[dev]"
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, grpc; print("torch", torch.__version__, "transformers", transformers.__version__, "grpcio", grpc.__version__)')"

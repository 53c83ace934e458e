#!/usr/bin/env bash
# Build the isolated environment of the TGI backend at .venv-tgi/ (once; a no-op while
# requirements/tgi.txt and the Python version are unchanged). No torch, no transformers: the
# text-generation client pins huggingface-hub<1.0, which transformers 5 cannot share.
#
#   bash scripts/build_tgi_venv.sh      # then: .venv-tgi/bin/tropd-teacher serve --backend tgi ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TGI_VENV:-.venv-tgi}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
key=$({ cat requirements/tgi.txt; "$PYTHON" --version; } | sha256sum | cut -c1-16)
if [ -f "$VENV/.built-$key" ]; then
  exit 0
fi
echo "[tgi-venv] building $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip_q() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_q -r requirements/tgi.txt
pip_q --no-deps -e .
touch "$VENV/.built-$key"
echo "[tgi-venv] done: text-generation $("$VENV/bin/python" -c "from importlib.metadata import version as v; print(v(\"text-generation\"), \"huggingface-hub\", v(\"huggingface-hub\"))")"

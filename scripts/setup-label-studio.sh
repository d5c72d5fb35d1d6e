#!/usr/bin/env bash
# Install Label Studio into its own virtual environment, .venv-ls (its dependencies stay out of .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv-ls/bin/label-studio ] && exit 0
[ -x .venv-ls/bin/python ] || "$PY" -m venv .venv-ls
.venv-ls/bin/python -m pip install -q --upgrade pip
.venv-ls/bin/python -m pip install -q label-studio
echo "setup: Label Studio ready (.venv-ls/bin/label-studio)"

#!/usr/bin/env bash
# Install everything semcorr needs on Debian: Mesa EGL for headless rendering, a virtual
# environment in .venv, and the package with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for pkg in libegl1 libgl1 libopengl0 libegl-mesa0 libgl1-mesa-dri; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
PY="${PYTHON:-python3}"
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=("python3-venv")
# chromium: the report's browser test opens the page in a real headless browser (no download at test time)
command -v chromium >/dev/null 2>&1 || missing+=("chromium")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch: the pinned CPU build first (this machine image ships its wheel; a plain `torch`
# requirement would pull a multi-GB CUDA build)
.venv/bin/python -c "import torch" >/dev/null 2>&1 || \
  .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,torch,ray]'  # ray: `--engine ray`, tested in CI
echo "setup: ready (.venv/bin/semcorr)"

#!/usr/bin/env bash
# Create .venv once: pinned PyPI ChimeraX wheel plus the dependencies that actually install on Python 3.11 (see docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.defmap-env-v2"
[ -f "$STAMP" ] && exit 0
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! dpkg -s libosmesa6 >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq libosmesa6) >/dev/null 2>&1 || echo "note: libosmesa6 not installed; images will be skipped"
fi
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip install -q --prefer-binary --disable-pip-version-check -c tools/constraints.txt"
$PIP --upgrade pip
# ChimeraX's bundle builder imports pkg_resources and names wheels as setuptools 69 / wheel 0.42 do
$PIP setuptools==69.5.1 wheel==0.42.0
$PIP --no-deps ChimeraX==0.1.71 2>&1 | grep -v -e "^WARNING: Location" -e "yanked" || true
$PIP -r tools/requirements-venv.txt 2>&1 | grep -v -e "^WARNING: Location" -e "requires .*, which is not installed" -e "^chimerax 0.1.71 requires" || true
"$VENV/bin/python" -c "import chimerax, onnxruntime, numpy, scipy" || { echo "environment check failed"; exit 1; }
touch "$STAMP"

#!/usr/bin/env bash
# Set up a fresh machine for askexpert: a virtual environment with the package and its dev tools,
# and the offline Fashion-MNIST dataset (Debian package dataset-fashion-mnist) where apt can get it.
# Idempotent: each step is skipped when already done. Used by `make` and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "[bootstrap] installing askexpert with everything (askexpert[all]: torch, torchvision, timm, ...) and the dev tools"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$VENV/.installed"
fi

have_fmnist() {
  for d in "${ASKEXPERT_DATA:-/nonexistent}/fashion-mnist" "${XDG_CACHE_HOME:-$HOME/.cache}/askexpert/fashion-mnist" \
           /usr/share/datasets/fashion-mnist; do
    [ -e "$d/t10k-labels-idx1-ubyte.gz" ] || [ -e "$d/t10k-labels-idx1-ubyte" ] && return 0
  done
  return 1
}
if ! have_fmnist; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || $SUDO true 2>/dev/null; }; then
    echo "[bootstrap] installing Debian's dataset-fashion-mnist"
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[bootstrap] Fashion-MNIST is not installed and apt-get is not usable here; askexpert will"
    echo "            download it on first use where a network exists (or set ASKEXPERT_DATA)."
  fi
fi

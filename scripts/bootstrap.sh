#!/usr/bin/env bash
# Set up a fresh machine for askexpert: a virtual environment with the package and its dev tools,
# the offline Fashion-MNIST dataset (Debian package dataset-fashion-mnist) and the fonts and Unicode data
# the han100 task is rendered from, where apt can get them.
# Idempotent: each step is skipped when already done. Used by `make` and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ] || [ lab/pyproject.toml -nt "$VENV/.installed" ]; then
  echo "[bootstrap] installing askexpert with everything (askexpert[all]: torch, torchvision, timm, ...), the lab (lab/: askexpert-lab) and the dev tools"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]' -e lab
  touch "$VENV/.installed"
fi

# serve --backend triton: PyTriton's wheel bundles a real Triton (x86-64 glibc Linux) and pins numpy < 2, so it
# gets an environment of its own (the Triton tests use it; without it they are skipped, saying why).
TRITON_VENV=${TRITON_VENV:-.venv-triton}
if [ "$(uname -m)" = x86_64 ] && ldd --version 2>&1 | grep -qi -E "glibc|gnu libc"; then
  if [ ! -f "$TRITON_VENV/.installed" ] || [ pyproject.toml -nt "$TRITON_VENV/.installed" ]; then
    echo "[bootstrap] installing askexpert[triton] (PyTriton and its Triton) in $TRITON_VENV"
    [ -x "$TRITON_VENV/bin/python" ] || "$VENV/bin/python" -m venv "$TRITON_VENV"
    if "$TRITON_VENV/bin/python" -m pip install --quiet -e '.[triton]'; then
      touch "$TRITON_VENV/.installed"
    else
      echo "[bootstrap] askexpert[triton] did not install: the Triton tests will be skipped, saying so"
    fi
  fi
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

# The han100 task (askexpert data build han100) renders Han characters from Debian's font packages and
# reads the Unicode Han database (unicode-data); the package list is the font catalogue's own.
# sysbench: the emulated edge's scalar-code benchmark (costs/profiles.yaml edge_speeds.*.scalar).
HAN_PACKAGES="$("$VENV/bin/python" -c 'from askexpert_lab.han.fonts import packages; print(" ".join(packages()))') unicode-data sysbench"
MISSING=""
for p in $HAN_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || $SUDO true 2>/dev/null; }; then
    echo "[bootstrap] installing the han100 task's fonts and Unicode data, and sysbench:$MISSING"
    $SUDO apt-get update -qq || true
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING >/dev/null
  else
    echo "[bootstrap] the han100 task's fonts are not installed and apt-get is not usable here:$MISSING"
  fi
fi

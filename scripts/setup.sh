#!/usr/bin/env bash
# One-command setup into a project-local virtual environment (.venv, or $WPAT_VENV); the system
# Python is never written to. Installs PyTorch (the CPU build on a machine without a CUDA GPU,
# never the CUDA stack there; the default build with one), wpat with its test extras, and
# Debian's Fashion-MNIST package for the real-data tests. Safe to run again: it reuses the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${WPAT_VENV:-.venv}"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "setup: installing Debian's dataset-fashion-mnist"
  $sudo_cmd apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist \
    || echo "setup: dataset-fashion-mnist not installed; the real-data tests will be skipped"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the virtual environment $venv"
  python3 -m venv "$venv"
else
  echo "setup: reusing the virtual environment $venv"
fi
py="$venv/bin/python"

if "$py" -c "import torch" 2>/dev/null; then
  echo "setup: torch $("$py" -c 'import torch; print(torch.__version__)') already in $venv"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: a CUDA GPU is present: installing the default (CUDA) build of torch"
  "$py" -m pip install -q "torch>=2.1"
else
  # torch==2.13.0 resolves to a local CPU wheel on this workplace's machines; elsewhere PyPI's
  # Linux wheel would be the CUDA one, so the CPU wheel comes from PyTorch's CPU index instead.
  if "$py" -m pip download -q --no-deps --no-index -d /tmp/wpat-wheel-probe "torch==2.13.0" \
      >/dev/null 2>&1; then
    echo "setup: no CUDA GPU: installing the CPU build torch==2.13.0 (local wheel)"
    "$py" -m pip install -q "torch==2.13.0"
  else
    echo "setup: no CUDA GPU: installing the CPU build of torch from PyTorch's CPU index"
    "$py" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$py" -m pip install -q -e ".[test]"
"$py" -c "import wpat, torch; print(f'setup: wpat {wpat.__version__} with torch {torch.__version__} ready in $venv (CUDA build: {torch.version.cuda or \"no\"})')"
echo "setup: run the tests with '$venv/bin/python -m pytest'; activate with 'source $venv/bin/activate'"

#!/usr/bin/env bash
# One-command setup: the CPU build of PyTorch (never the CUDA stack on a CPU-only machine),
# wpat with its test extras, and Debian's Fashion-MNIST package for the real-data tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

# Pin torch first: with 2.13.0 installed, wpat's `torch>=2.1` is already satisfied, so pip
# resolves nothing else from the registry. On a CUDA machine, install your torch build first.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
python -c "import wpat, torch; print(f'wpat {wpat.__version__} with torch {torch.__version__} ready')"

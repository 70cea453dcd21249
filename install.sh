#!/usr/bin/env bash
# Install pgolf and its test tools. Keeps a torch that is already installed (e.g. a CUDA build);
# where none is, installs the CPU build 2.13.0 first so pip does not pull a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip --version >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"

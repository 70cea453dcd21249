#!/usr/bin/env bash
# The whole pipeline on the tiny preset and the embedded default data (≈5 minutes on 2 cores).
set -euo pipefail
pgolf run --preset cpu-tiny "$@"

#!/usr/bin/env bash
# The record pipeline on 8×H100: data → train (600 s cap) → quantize → eval.
# Usage: SEED=1337 bash runs/speedrun_8xh100.sh [preset]   (preset default pr1550)
# Needs network once for the data (MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf for sp8192).
set -euo pipefail
preset=${1:-pr1550}
seed=${SEED:-1337}
export MATCHED_FINEWEB_REPO_ID=${MATCHED_FINEWEB_REPO_ID:-kevclark/parameter-golf}
data=data/datasets/fineweb10B_sp8192
[ -d "$data" ] || pgolf data fineweb --variant sp8192 --train-shards 128 --out data
run=out/$(date +%Y%m%d-%H%M%S)_${preset}_s${seed}
torchrun --standalone --nproc_per_node=8 -m pgolf train --preset "$preset" --data "$data" \
  --run-dir "$run" --set seed="$seed"
pgolf quantize "$run"
torchrun --standalone --nproc_per_node=8 -m pgolf eval "$run/artifact.pgolf" --stride 64

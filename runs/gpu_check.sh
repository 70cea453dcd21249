#!/usr/bin/env bash
# On a lent H100 (device tool): a short pr1550 run on bench-v1 (train → EMA → GPTQ → artifact →
# round trip + sliding eval), then the training-throughput benchmark. Results go to $OUT.
# Needs, carried: .bench/ (copy of ../shared/data/bench-v1: sp8192/ + fineweb_8192_bpe.model)
# and .whl/ (brotli, zstandard wheels for the device's Python). Usage:
#   COMMIT=<sha> SECS=80 bash runs/gpu_check.sh
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
export PYTHONUNBUFFERED=1
{ date -u; echo "commit:${COMMIT:-unknown}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader;
  python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/env.txt"
run=/tmp/run_pr1550
timeout ${RUN_TIMEOUT:-420} python3 -m pgolf run --preset pr1550 --data .bench/sp8192 --run-dir $run \
  --set max_wallclock_seconds=${SECS:-80} --set warmup_steps=3 --set val_loss_every=0 \
  --set recur_start_step=-1 --set recur_start_frac=0.5 --set train_log_every=10 \
  2>&1 | tee "$OUT/run.log"
cp $run/result.json $run/log.txt $run/metrics.jsonl "$OUT/" 2>/dev/null
timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/train_throughput.py --preset pr1550 --batch-seqs 48 \
  --seq-len 2048 --steps ${BENCH_STEPS:-8} --out "$OUT/throughput.jsonl" 2>&1 | tee "$OUT/throughput.log"

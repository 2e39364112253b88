#!/usr/bin/env bash
# The GPU checks, as one script for a lent accelerator (docs/results.md records what it printed):
#   1. the CUDA tests (pytest -m gpu), 2. `neurohw bench --device cuda`,
#   3. a full MNIST run of mnist_ep_fc1 on the GPU, 4. the conv card, 5. the DTP MLP card (L-DRL),
#   6. timed CIFAR-10 VGG epochs of EP and of L-DRL (only if CIFAR-10 is present: the machine has no internet).
# Usage: scripts/gpu_checks.sh [OUT_DIR]   (OUT_DIR defaults to runs/gpu; each step logs there)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -m pytest -q -m gpu 2>&1 | tail -5 | tee "$OUT/pytest_gpu.txt"
"$PY" -m neurohw bench --device cuda --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
"$PY" -m neurohw train models/mnist_ep_fc1.toml device=cuda --out "$OUT/mnist_ep_fc1" --overwrite --no-progress 2>&1 | tee "$OUT/mnist_ep_fc1.txt"
"$PY" -m neurohw train models/mnist_ep_conv.toml device=cuda train.epochs=${CONV_EPOCHS:-40} --out "$OUT/mnist_ep_conv" --overwrite --no-progress 2>&1 | tee "$OUT/mnist_ep_conv.txt"
"$PY" -m neurohw train models/mnist_dtp_mlp.toml device=cuda --out "$OUT/mnist_dtp_mlp" --overwrite --no-progress 2>&1 | tee "$OUT/mnist_dtp_mlp.txt"
if [ -d "${NEUROHW_DATA:-data}/cifar-10-batches-py" ]; then
  "$PY" -m neurohw train models/cifar10_ep_vgg.toml device=cuda train.epochs=1 --out "$OUT/cifar10_ep_vgg_1epoch" --overwrite --no-progress 2>&1 | tee "$OUT/cifar10_1epoch.txt"
  "$PY" -m neurohw train models/cifar10_dtp_vgg.toml device=cuda train.epochs=1 --out "$OUT/cifar10_dtp_vgg_1epoch" --overwrite --no-progress 2>&1 | tee "$OUT/cifar10_dtp_1epoch.txt"
fi

#!/usr/bin/env bash
# The GPU checks of a lent accelerator, in two stages (docs/results.md §6 records what they printed).
#
#   stage 1 (≤ 4 minutes): the machine (GPU, driver, torch, CUDA), the CUDA tests (pytest -m gpu), then
#           `neurohw bench --card` of every EP card on synthetic data of its shape — eager, static program,
#           CUDA graph, TF32 and bf16 operands side by side in one run (each card its own eager baseline) —
#           `neurohw bench --population 32` (issue 14) and `neurohw bench --device cuda` (engine vs autograd of Φ);
#   stage 2 (the rest of the slot): the full mnist_ep_conv card on the GPU, capped by wall time
#           (STAGE2_SECONDS) and checkpointed after every epoch, so that a later slot resumes it where it
#           stopped (the same command: it passes --resume when the run directory holds a checkpoint).
#
# Usage:  scripts/gpu_checks.sh [OUT_DIR]      (default runs/gpu; every step logs into OUT_DIR)
#   STAGE=1|2|all (default all)   STAGE2_SECONDS (default 420)   DEVICE (default cuda)
#   QUICK=1: tiny sizes, to test this script on a CPU (DEVICE=cpu QUICK=1 scripts/gpu_checks.sh /tmp/gpu_dry)
# On the device machine there is no network: it uses that machine's own Python and torch with PYTHONPATH=.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu}
STAGE=${STAGE:-all}
DEVICE=${DEVICE:-cuda}
STAGE2_SECONDS=${STAGE2_SECONDS:-420}
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
log() { echo "== $* ($(date -u +%FT%TZ))" | tee -a "$OUT/steps.txt"; }

if [ "${QUICK:-0}" = 1 ]; then
  BATCHES=2; SMALL_FC="learner.T_free=6 learner.T_nudge=3"; SMALL_CONV="learner.T_free=4 learner.T_nudge=2 net.channels=[4,8]"
  SMALL_VGG="learner.T_free=2 learner.T_nudge=2 train.batch_size=4"; CONV_RUN="train.epochs=1 data.limit_train=100 data.limit_eval=50"
else
  BATCHES=50; SMALL_FC=""; SMALL_CONV=""; SMALL_VGG=""; CONV_RUN=""
fi

if [ "$STAGE" = 1 ] || [ "$STAGE" = all ]; then
  log "stage 1: machine"
  { git rev-parse --short HEAD 2>/dev/null || echo "no git"; date -u +%FT%TZ; nproc
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  } 2>&1 | tee "$OUT/machine.txt"
  if [ "$DEVICE" = cuda ]; then
    log "stage 1: CUDA tests"
    "$PY" -m pytest -q -m gpu -s -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/pytest_gpu.txt"
  fi
  for card in mnist_ep_fc1 mnist_cep_fc1 mnist_cvf_fc1 mnist_ep_conv cifar10_ep_vgg; do
    case $card in
      mnist_ep_conv) extra=$SMALL_CONV; n=$BATCHES ;;
      cifar10_ep_vgg) extra=$SMALL_VGG; n=$(( BATCHES < 10 ? BATCHES : 10 )) ;;
      *) extra=$SMALL_FC; n=$BATCHES ;;
    esac
    log "stage 1: bench --card $card"
    COMPILE=""; [ "$card" = mnist_ep_fc1 ] && [ "${QUICK:-0}" != 1 ] && COMPILE="--compile"
    # shellcheck disable=SC2086
    "$PY" -m neurohw bench --card "models/$card.toml" --device "$DEVICE" --batches "$n" $extra $COMPILE \
      --json "$OUT/bench_$card.json" 2>&1 | tee "$OUT/bench_$card.txt"
  done
  log "stage 1: bench --card mnist_ep_fc1, a whole epoch"
  EPOCH_SAMPLES=$([ "${QUICK:-0}" = 1 ] && echo 200 || echo 55000)
  # shellcheck disable=SC2086
  "$PY" -m neurohw bench --card models/mnist_ep_fc1.toml --device "$DEVICE" --batches "$BATCHES" $SMALL_FC \
    --epoch-samples "$EPOCH_SAMPLES" --json "$OUT/bench_mnist_ep_fc1_epoch.json" 2>&1 | tee "$OUT/bench_mnist_ep_fc1_epoch.txt"
  log "stage 1: bench --population (issue 14: 32 members of fc1 as one program vs one after another)"
  # shellcheck disable=SC2086
  "$PY" -m neurohw bench --card models/mnist_ep_fc1.toml --device "$DEVICE" --population $([ "${QUICK:-0}" = 1 ] && echo 2 || echo 32) \
    --batches $([ "${QUICK:-0}" = 1 ] && echo 2 || echo 20) $SMALL_FC --json "$OUT/bench_population.json" 2>&1 | tee "$OUT/bench_population.txt"
  log "stage 1: bench (engine vs autograd of Φ)"
  "$PY" -m neurohw bench --device "$DEVICE" --samples $([ "${QUICK:-0}" = 1 ] && echo 40 || echo 2000) \
    --repeats $([ "${QUICK:-0}" = 1 ] && echo 1 || echo 3) --json "$OUT/bench_engine.json" 2>&1 | tee "$OUT/bench_engine.txt"
fi

if [ "$STAGE" = 2 ] || [ "$STAGE" = all ]; then
  RUN="$OUT/mnist_ep_conv"
  RESUME=""
  [ -f "$RUN/checkpoint.pt" ] && RESUME="--resume"
  log "stage 2: mnist_ep_conv on $DEVICE for at most ${STAGE2_SECONDS} s ${RESUME:-(new run)}"
  # SIGINT ends the run between two atomic checkpoints; the next slot resumes with the same command
  # shellcheck disable=SC2086
  timeout -s INT "$STAGE2_SECONDS" "$PY" -m neurohw train models/mnist_ep_conv.toml device="$DEVICE" $CONV_RUN \
    --out "$RUN" $RESUME --no-progress 2>&1 | tee -a "$OUT/mnist_ep_conv.txt"
  echo "exit ${PIPESTATUS[0]} (124: stopped by the wall-time cap; resume with the same command)" | tee -a "$OUT/mnist_ep_conv.txt"
fi
log "done"

#!/usr/bin/env bash
# Full-length CPU training of the MNIST fully connected cards, one after the other, each on one
# thread (leaves the second core free). Results: runs/<card>/{metrics.jsonl,summary.json}; table:
#   python scripts/results_table.py runs/mnist_*
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for card in "${@:-mnist_ep_fc1 mnist_cep_fc1 mnist_cvf_fc1 mnist_ep_fc2}"; do
  for c in $card; do
    echo "== $c $(date -u +%FT%TZ)"
    "$PY" -m neurohw train "models/$c.toml" --out "runs/$c" --overwrite --no-progress
  done
done

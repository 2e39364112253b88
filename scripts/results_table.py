#!/usr/bin/env python
"""Print the docs/results.md table rows of finished runs: `python scripts/results_table.py runs/mnist_*`.

Per run: the card, the algorithm, our test error at the epoch chosen on validation (and that
validation error), the epochs, the total training wall time and the machine, beside the card's
published figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neurohw.config import load_config


def row(run: Path) -> str:
    summary = json.loads((run / "summary.json").read_text())
    cfg = load_config(run / "config.toml")
    minutes = summary["wall_s_total"] / 60
    return (
        f"| `{run.name}` | {cfg.learner.algorithm} ({summary['estimator'] or '-'}) | **{100 * summary['test_error']:.2f} %** "
        f"| {100 * summary['val_error']:.2f} % (epoch {summary['best_epoch']}/{summary['epochs']}) "
        f"| {minutes:.0f} min, {summary['device']}, {summary['threads']} thread(s), {summary['created_utc'][:10]} "
        f"| {cfg.reference.published} |"
    )


if __name__ == "__main__":
    print("| card | learner | test error (ours) | validation error (selected epoch) | wall time, device, date | published |")
    print("|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        if (Path(arg) / "summary.json").exists():
            print(row(Path(arg)))

#!/usr/bin/env python
"""Sweep one scenario key of the analog substrate and plot accuracy against it.

    python scripts/sweep.py runs/mnist_ep_fc1/network_pcm.h5 --sim sims/pcm_1day.toml \
        --key noise.t_inference_s --values 1 3600 86400 2592000 31536000 --n 2000 --workers 2 \
        --out runs/sweep_drift [--logx] [--set peripherals.out_bound=8]

Writes OUT/sweep.json (every report) and OUT/sweep.png (accuracy and the torch reference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neurohw.errors import NeurohwError
from neurohw.io.atomic import atomic_path, write_text
from neurohw.simulate import sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--sim", required=True)
    p.add_argument("--key", required=True, help="scenario key, e.g. peripherals.adc_bits")
    p.add_argument("--values", nargs="+", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--logx", action="store_true")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="fixed scenario overrides at every point")
    args = p.parse_args()
    try:
        reports = sweep(args.file, args.sim, args.key, args.values, args.n, args.workers, overrides=args.set)
    except NeurohwError as e:
        raise SystemExit(f"sweep: error: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.json", json.dumps(reports, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [float(r["sweep"]["value"]) for r in reports]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [100 * r["accuracy"] for r in reports], "o-", label="analog substrate")
    ax.plot(xs, [100 * r["reference_accuracy"] for r in reports], "k--", label="torch reference")
    if args.logx:
        ax.set_xscale("log")
    ax.set_xlabel(args.key)
    ax.set_ylabel(f"test accuracy (%), {reports[0]['n_samples']} images")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "sweep.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    for r in reports:
        print(f"{args.key} = {r['sweep']['value']}: accuracy {100 * r['accuracy']:.2f} % (reference {100 * r['reference_accuracy']:.2f} %)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""One table comparing every learner on MNIST with the same net, data, splits, epochs and augmentation.

    OMP_NUM_THREADS=1 python scripts/compare.py --epochs 3 --out runs/compare [--methods EP-1s BP L-DRL]

The net is that of `models/mnist_ep_fc1.toml` for every method (784-512-10, sigmoid4, MSE output
inside the dynamics, nudge outside ρ): EP (three estimators), C-EP and C-VF use their cards (the same
net; C-VF adds untied feedback weights), BPTT and BP the fc1 card with `learner.algorithm` changed,
and DTP, DRL and L-DRL the fc1 card with the DTP settings below (β, feedback iterations, noise and
learning rates; the forward learning rates are fc1's). Every run uses the same validation split
(5,000 training images, `data.split_seed` 0), no augmentation, `train.epochs` = --epochs, CPU and
float32; the test error is that of the epoch with the lowest validation error. Writes, under --out,
one run directory per method, `table.md` (the markdown table) and `compare.json`; the bar chart goes
to --figure (default <--out>/compare_mnist.png: the tracked docs/figures/compare_mnist.png is replaced
only when named). Prints the table and every path it wrote.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neurohw.config import load_config
from neurohw.errors import NeurohwError
from neurohw.io.atomic import atomic_path, write_text
from neurohw.train import train

ROOT = Path(__file__).resolve().parents[1]
DTP_SETTINGS = ["learner.beta=0.7", "learner.fb_iters=[20]", "learner.fb_noise=[0.1]", "learner.fb_lrs=[0.05]", "learner.fb_momentum=0.9"]

# name → (card, overrides, local in space, local in time, symmetric weights, what an update needs)
METHODS: dict[str, tuple[str, list[str], str, str, str, str]] = {
    "EP-1s": ("mnist_ep_fc1", [], "yes", "no", "yes",
              "free and nudged fixed points of one net (two phases; s* stored); pre × post contrast"),
    "EP-rs": ("mnist_ep_fc1", ["learner.estimator=random-sign"], "yes", "no", "yes", "as EP-1s, sign of β drawn per batch"),
    "EP-sym": ("mnist_ep_fc1", ["learner.estimator=symmetric"], "yes", "no", "yes", "as EP-1s, two nudged phases (±β)"),
    "C-EP": ("mnist_cep_fc1", [], "yes", "yes", "yes", "pre × post change at every nudged step; no stored state"),
    "C-VF": ("mnist_cvf_fc1", [], "yes", "yes", "no", "as C-EP with untied feedback weights, also learned locally"),
    "BPTT": ("mnist_ep_fc1", ["learner.algorithm=bptt"], "no", "no", "yes",
             "the whole trajectory stored and back-propagated through time with transposed weights"),
    "BP": ("mnist_ep_fc1", ["learner.algorithm=bp"], "no", "no", "yes", "a backward pass through the transposed weights"),
    "DTP": ("mnist_ep_fc1", ["learner.algorithm=dtp", *DTP_SETTINGS], "yes", "no", "no",
            "layer targets through learned feedback; feedback: layer-local reconstruction of noise"),
    "DRL": ("mnist_ep_fc1", ["learner.algorithm=drl", *DTP_SETTINGS], "forward yes, feedback no", "no", "no",
            "as DTP; feedback trained through the path to the output and back"),
    "L-DRL": ("mnist_ep_fc1", ["learner.algorithm=ldrl", *DTP_SETTINGS], "yes", "no", "no",
              "as DTP; feedback: layer-local noise-correlation loss (Jacobian → transpose)"),
}


def common_overrides(epochs: int, limit_train: int) -> list[str]:
    return [
        f"train.epochs={epochs}", "data.val_size=5000", "data.split_seed=0", "data.augment=false", "train.seed=0",
        f"data.limit_train={limit_train}", "device=cpu", "dtype=float32",
    ]


def run_all(names: list[str], epochs: int, out: Path, limit_train: int) -> list[dict]:
    rows, nets = [], {}
    for name in names:
        card, overrides, space, time_local, symmetric, needs = METHODS[name]
        notes: list[str] = []  # card keys the method's overrides leave unused: printed once, in summary.json
        cfg = load_config(ROOT / "models" / f"{card}.toml", overrides + common_overrides(epochs, limit_train), notes=notes)
        nets[name] = cfg.net
        if nets[name] != nets[names[0]]:
            raise SystemExit(f"compare: method {name} uses another net than {names[0]}: {cfg.net} vs {nets[names[0]]}")
        print(f"== {name}: {card} {' '.join(overrides)}  ({time.strftime('%H:%M:%S')})", flush=True)
        summary = train(cfg, out / name, overwrite=True, progress=False, log=print, notes=notes)
        history = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        rows.append({
            "method": name, "card": card, "overrides": overrides, "algorithm": cfg.learner.algorithm,
            "test_error": summary["test_error"], "val_error": summary["val_error"], "best_epoch": summary["best_epoch"],
            "epochs": summary["epochs"], "wall_s_per_epoch": sum(h["wall_s"] for h in history) / len(history),
            "local_in_space": space, "local_in_time": time_local, "symmetric_weights": symmetric, "needs": needs,
            "angles_to_bp_deg": history[summary["best_epoch"] - 1].get("angles_to_bp_deg"),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | test error | validation error (epoch) | wall time / epoch | local in space | local in time | symmetric weights | what an update needs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        angles = f"; angles to BP {', '.join(f'{a:.0f}°' for a in r['angles_to_bp_deg'])}" if r["angles_to_bp_deg"] else ""
        lines.append(
            f"| {r['method']} | **{100 * r['test_error']:.2f} %** | {100 * r['val_error']:.2f} % ({r['best_epoch']}/{r['epochs']}) "
            f"| {r['wall_s_per_epoch']:.1f} s | {r['local_in_space']} | {r['local_in_time']} | {r['symmetric_weights']} "
            f"| {r['needs']}{angles} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.5), sharey=True)
    names = [r["method"] for r in rows][::-1]
    errors = [100 * r["test_error"] for r in rows][::-1]
    times = [r["wall_s_per_epoch"] for r in rows][::-1]
    ax_err.barh(names, errors, color="tab:blue")
    ax_err.set_xlabel("test error (%), epoch chosen on validation")
    for y, e in enumerate(errors):
        ax_err.text(e, y, f" {e:.2f}", va="center", fontsize=8)
    ax_time.barh(names, times, color="tab:gray")
    ax_time.set_xlabel("wall time per epoch (s)")
    for y, t in enumerate(times):
        ax_time.text(t, y, f" {t:.0f}", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def chart_title(epochs: int, limit_train: int) -> str:
    data = f"first {limit_train:,} training images" if limit_train > 0 else "all training images"
    return f"MNIST 784-512-10, {epochs} epoch(s), {data} (--limit-train {limit_train}), same data and splits for every method"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figure", help="the bar chart (default <--out>/compare_mnist.png)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise SystemExit("compare: --epochs must be ≥ 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        rows = run_all(args.methods, args.epochs, out, args.limit_train)
    except NeurohwError as e:
        raise SystemExit(f"compare: error: {e}")
    text = table(rows)
    figure = Path(args.figure) if args.figure else out / "compare_mnist.png"
    write_text(out / "table.md", text)
    write_text(out / "compare.json", json.dumps(rows, indent=2) + "\n")
    bar_chart(rows, figure, chart_title(args.epochs, args.limit_train))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'compare.json'} and {figure}")


if __name__ == "__main__":
    main()

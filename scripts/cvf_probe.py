"""Probe the dynamics of a run while it trains: is the free phase still converging when a C-VF run collapses?

    python scripts/cvf_probe.py CARD [key=value ...] --out runs/probe_X [--every 500] [--epochs N]

Trains CARD exactly as `neurohw train` does (same Trainer, same batches and updates) and, every
`--every` batches, measures on the first 64 validation images (a fixed set, never used to choose anything):

* what every epoch of `neurohw train` records (dynamics.settling, docs/math.md eq. settle): the residual
  ‖G(s*) − s*‖ / ‖s*‖ of one more step from the free state s* after T_free steps, and the loop gain (the
  spectral radius of the two-step Jacobian at s*; a fixed point attracts when it is < 1), here on all 64;
* `loss_T`, `loss_4T`: the mean cost at s* after T_free and after 4·T_free steps;
* weight norms (Frobenius) of every parameter, the forward/feedback angles, the mean training loss of
  the window, the fraction of saturated units (ρ' < 1 % of its maximum) per layer.

One JSON line per probe goes to OUT/probe.jsonl (the run directory is a standard one; its metrics.jsonl
is not written: the probe drives the epochs itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from neurohw.config import load_config
from neurohw.data import one_hot
from neurohw.dynamics import relax, settling
from neurohw.learning import weight_angles_deg
from neurohw.train import Trainer


def probe(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict:
    net, learner = trainer.net, trainer.learner
    T = learner.T_free
    out = settling(net, x, T, order=learner.relaxation, n_gain=len(x))  # residual and loop gain (eq. settle)
    with torch.no_grad():
        drive = net.input_drive(x)
        s_star = relax(net, drive, net.init_state(x), T, check=False)
        s_long = relax(net, drive, net.init_state(x), 4 * T, check=False)
        pre = net.pre_activations(drive, s_star)
        act = net.activation
        slope_max = max(act.slope(torch.linspace(-8.0, 8.0, 3201, dtype=x.dtype)).max().item(), 1e-30)
        out["saturated"] = [(act.slope(a) < 0.01 * slope_max).to(x.dtype).mean().item() for a in pre]
        out["loss_T"], out["loss_4T"] = net.loss(s_star, y).mean().item(), net.loss(s_long, y).mean().item()
    out["norms"] = {n: p.detach().norm().item() for n, p in net.named_parameters()}
    out["angles_deg"] = weight_angles_deg(net) if not net.symmetric else []
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("card")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--every", type=int, default=500, help="batches between probes")
    ap.add_argument("--epochs", type=int, default=0, help="stop after this many epochs (default: the card's)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    cfg = load_config(args.card, args.overrides)
    trainer = Trainer(cfg, args.out, resume=False, overwrite=args.overwrite, data_dir=None, splits=None,
                      progress=False, log=print)
    val = trainer.val_split
    xv = trainer.preprocess.float_images(val.images[:64]).reshape(64, *trainer.net.input_shape)
    yv = one_hot(val.labels[:64], trainer.info.n_classes, trainer.dtype)
    split, batch = trainer.train_split, cfg.train.batch_size
    n_batches = len(split) // batch
    epochs = args.epochs or cfg.train.epochs
    out = Path(args.out) / "probe.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    t0 = time.time()
    with out.open("a") as f:
        for epoch in range(epochs):
            perm = torch.randperm(len(split), generator=trainer.shuffle_gen)[: n_batches * batch].view(n_batches, batch)
            window = []
            for b in range(n_batches):
                idx = perm[b].to(trainer.device)
                x = trainer.preprocess.float_images(split.images[idx]).reshape(batch, *trainer.net.input_shape)
                y = one_hot(split.labels[idx], trainer.info.n_classes, trainer.dtype)
                stats = trainer.learner.step(trainer.net, x, y, trainer.apply)
                window.append(float(stats["loss"]))
                if (b + 1) % args.every == 0 or b + 1 == n_batches:
                    line = {"epoch": epoch + (b + 1) / n_batches, "train_loss": sum(window) / len(window),
                            "lrs": [g["lr"] for g in trainer.optimizer.param_groups], **probe(trainer, xv, yv),
                            "wall_s": round(time.time() - t0, 1)}
                    window = []
                    f.write(json.dumps(line) + "\n")
                    f.flush()
                    print(f"epoch {line['epoch']:7.2f} loss {line['train_loss']:.4f} res {line['free_residual_max']:.2e} "
                          f"gain {line['loop_gain_median']:.3f}/{line['loop_gain_max']:.3f} loss_T {line['loss_T']:.4f} "
                          f"loss_4T {line['loss_4T']:.4f} sat {[round(s, 3) for s in line['saturated']]} "
                          f"angle {[round(a, 1) for a in line['angles_deg']]}", flush=True)
            trainer.end_epoch(epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The two max-pool index constructions of DTP's conv feedback losses on a small conv net on real MNIST.

    OMP_NUM_THREADS=1 python scripts/dtp_pool_indices.py [--batches 30] [--fb-iters 20] [--bp-batches 150]

Net: 28×28 → conv 16 → conv 32 → conv 64 (3×3, padding 1, ELU, 2×2 max-pool each) → Linear(576 → 10),
softmax CE readout; the feedback maps of conv 2, conv 3 and the readout are trained. σ = 0.4, 0.4, 0.08
(the noise of conv layers 2–3 and of the readout in models/cifar10_dtp_vgg.toml); feedback SGD with
momentum 0.9, learning rates --fb-lrs (ldrl, drl) or --dtp-fb-lrs (dtp: its loss is not O(σ²), the
L-DRL rates make it diverge); β 0.7. Two forward nets, both frozen while the feedback trains: the seeded
initialisation, and that net after --bp-batches SGD steps of BP (lr 0.02, momentum 0.9, batch 64).

For each forward net, prints per feedback layer with a max-pool the fraction of pooled units whose arg-max
changes when its input s^{n−1} gets the noise ε ~ N(0, σ_n²) (mean over 8 draws, on the 256 diagnostic
images), then, for L-DRL and DTP under both `learner.fb_pool_indices` ("noisy": the authors', "clean"),
and for DRL (which always un-pools at the clean indices), the angles of `epoch_metrics` on those 256
images after --batches batches of 64 × --fb-iters feedback steps per layer from the first 2,000 training
images (the same seed, hence the same initial G and the same noise stream, for both constructions):
update vs BP per layer (concatenated and per parameter), G's Jacobian vs F's transposed Jacobian, and A
vs W. Writes nothing; the header gives command, machine, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurohw.config import DataConfig, NetConfig  # noqa: E402
from neurohw.data import Preprocess, load_splits, one_hot  # noqa: E402
from neurohw.learning import DTP  # noqa: E402
from neurohw.nets.build import build_net  # noqa: E402

NET = NetConfig(architecture="conv", channels=(16, 32, 64), kernel_sizes=(3, 3, 3), paddings=(1, 1, 1),
                pools=("max2", "max2", "max2"), hidden=(), activation="elu", cost="ce_readout")
SIGMAS = (0.4, 0.4, 0.08)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    return (f"{platform.machine()}, {cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
            f"{datetime.date.today().isoformat()}; commit {commit}{' + uncommitted changes' if dirty.strip() else ''}")


def argmax_changes(learner: DTP, net, x: torch.Tensor, draws: int = 8) -> list[float | None]:
    """Per feedback layer n = 2…N: fraction of pooled units whose arg-max changes under ε ~ N(0, σ_n²)."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        outs, ctxs = learner.forward(net, x)
        ins = [x, *outs[:-1]]
        out = []
        for i in range(1, len(net.layers)):
            if ctxs[i] is None:
                out.append(None)
                continue
            moved = 0.0
            for _ in range(draws):
                eps = SIGMAS[i - 1] * torch.randn(ins[i].shape, generator=gen, dtype=x.dtype)
                moved += float((learner.layer_forward(net, i, ins[i] + eps)[1] != ctxs[i]).double().mean())
            out.append(moved / draws)
    return out


def fmt(values) -> str:
    return ", ".join("–" if v is None else f"{v:.1f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=30, help="feedback-training batches of 64 images")
    ap.add_argument("--fb-iters", type=int, default=20, help="feedback SGD steps per batch and layer")
    ap.add_argument("--fb-lrs", type=float, nargs=3, default=(0.05, 0.05, 0.18), help="feedback lrs (conv 2, conv 3, readout), ldrl/drl")
    ap.add_argument("--dtp-fb-lrs", type=float, nargs=3, default=(5e-4, 5e-4, 2e-3), help="feedback lrs of vanilla dtp")
    ap.add_argument("--bp-batches", type=int, default=150, help="BP steps that make the second forward net")
    ap.add_argument("--kinds", nargs="+", default=["ldrl", "dtp", "drl"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="learner.seed values (initial G, noise stream)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"command: python scripts/dtp_pool_indices.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    splits = load_splits(DataConfig(dataset="mnist", val_size=5000, limit_train=2000, limit_eval=0))
    net0 = build_net(NET, splits.info.input_shape, 10, generator=torch.Generator().manual_seed(0))
    prep = Preprocess(splits.info, net0.input_shape, torch.device("cpu"), torch.float32)
    x_all, y_all = prep(splits.train.images), one_hot(splits.train.labels, 10, torch.float32)
    x_diag, y_diag = x_all[:256], y_all[:256]

    trained = build_net(NET, splits.info.input_shape, 10, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(trained.parameters(), lr=0.02, momentum=0.9)
    for b in range(args.bp_batches):
        j = (b * 64) % (len(x_all) - 64)
        opt.zero_grad()
        trained.loss(trained.feedforward(x_all[j : j + 64]), y_all[j : j + 64]).mean().backward()
        opt.step()
    with torch.no_grad():
        err = float((trained.output(trained.feedforward(x_diag)).argmax(1) != y_diag.argmax(1)).float().mean())
    print(f"forward nets: seeded initialisation; after {args.bp_batches} BP steps (training error on the 256 "
          f"diagnostic images {100 * err:.1f} %)\n")

    for label, net in (("initialisation", net0), (f"after {args.bp_batches} BP steps", trained)):
        probe = DTP(0.7, "ldrl", fb_noise=SIGMAS)
        probe.setup(net)
        print(f"### forward net: {label}")
        print(f"arg-max changed under ε (fraction of pooled units, conv 2, conv 3): "
              f"{', '.join(f'{100 * v:.0f} %' for v in argmax_changes(probe, net, x_diag) if v is not None)}\n")
        print("| feedback loss | fb_pool_indices | seed | update ∠ BP, layers 1–4 (°) | per parameter W / b, layers 2–3 (°) "
              "| Jacobian ∠, G of conv 2, conv 3, readout (°) | A ∠ W (°) | s |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, seed in ((k, sd) for k in args.kinds for sd in args.seeds):
            for mode in ("noisy", "clean") if kind != "drl" else ("clean",):  # DRL un-pools at the clean indices
                t0 = time.perf_counter()
                lrs = tuple(args.dtp_fb_lrs if kind == "dtp" else args.fb_lrs)
                learner = DTP(0.7, kind, fb_iters=(args.fb_iters,), fb_noise=SIGMAS, fb_lrs=lrs,
                              fb_momentum=0.9, fb_pool_indices=mode, seed=seed)
                learner.setup(net)
                for b in range(args.batches):
                    j = (b * 64) % (len(x_all) - 64)
                    learner.train_feedback(net, x_all[j : j + 64])
                m = learner.epoch_metrics(net, x_diag, y_diag)
                per = "; ".join(f"{w:.1f} / {bb:.1f}" for w, bb in m["angles_to_bp_per_param_deg"][1:3])
                label = "n/a (clean indices)" if kind == "drl" else mode + (" (default)" if mode == "noisy" else "")
                print(f"| {kind} | {label} | {seed} | {fmt(m['angles_to_bp_deg'])} | {per} "
                      f"| {fmt(m['jacobian_angles_deg'])} | {fmt(m['feedback_weight_angles_deg'])} | {time.perf_counter() - t0:.0f} |",
                      flush=True)
        print()


if __name__ == "__main__":
    main()

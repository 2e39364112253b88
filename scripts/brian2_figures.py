#!/usr/bin/env python
"""Figures of the Brian2 substrate on an exported dense network (docs/results.md §8):

    python scripts/brian2_figures.py runs/mnist_ep_fc1/network.h5 --n 200 --out docs/figures

* brian2_phases.png: one MNIST test image through the free and the nudged phase (towards its label):
  raster of the LIF hidden and output layers, the output traces of the LIF and of the rate model;
* brian2_time.png: accuracy against the simulated free-phase time (rate and LIF, n test images), and
  the C-EP plasticity's weight change against the torch C-EP update (cosine) against the nudged-phase
  duration, both models, one image.

Also writes OUT/brian2_figures.json with every number plotted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def cep_reference(spec, x, y, beta, T_nudge, lrs):
    """ΔW of neurohw's torch C-EP (float64) on one batch."""
    import torch

    from neurohw.learning.cep import CEP
    from neurohw.nets.convert import from_spec

    net = from_spec(spec, torch.float64)
    params = net.param_list()
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD([{"params": params[2 * k : 2 * k + 2], "lr": lr} for k, lr in enumerate(lrs)])
    CEP(beta, spec.T_free, T_nudge).step(net, torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), opt.step)
    return [(p.detach() - q).numpy() for p, q in zip(params[0::2], before[0::2])]


def cosine(a, b) -> float:
    a = np.concatenate([v.ravel() for v in a])
    b = np.concatenate([v.ravel() for v in b])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--n", type=int, default=200, help="test images for accuracy against time")
    p.add_argument("--rate", default="sims/brian2_rate.toml")
    p.add_argument("--lif", default="sims/brian2_lif.toml")
    p.add_argument("--image", type=int, default=-1,
                   help="test image of the phase figure and the plasticity check (default: the one of the n with the "
                        "largest torch-reference loss; a well-classified image gives s^β ≈ s*, an EP signal ~1e-4)")
    p.add_argument("--eta", type=float, default=1e-4, help="learning rate of the plasticity check (C-EP's η → 0 limit)")
    p.add_argument("--out", default="docs/figures")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neurohw.data import load_raw
    from neurohw.io.atomic import atomic_path, write_text
    from neurohw.io.hdf5 import load_spec
    from neurohw.simulate import dataset_of
    from neurohw.substrates.brian2 import Brian2Substrate, load_brian2_scenario

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_spec(args.file)
    _, _, x_test, y_test = load_raw(dataset_of(spec))
    x = spec.preprocess(x_test[: args.n].numpy())
    labels = y_test[: args.n].numpy()
    n_out = spec.layers[-1].out_shape[0]
    from neurohw.substrates.torch import TorchSubstrate

    ref_out = TorchSubstrate().run(spec, x).outputs
    if args.image < 0:
        args.image = int(((ref_out - np.eye(n_out)[labels]) ** 2).sum(1).argmax())
    x1, y1 = x[args.image : args.image + 1], np.eye(n_out)[labels[args.image : args.image + 1]]
    result: dict = {"file": args.file, "n": args.n, "date_utc": time.strftime("%Y-%m-%d", time.gmtime())}

    # --- one image through both phases
    lif = Brian2Substrate(load_brian2_scenario(args.lif))
    rate = Brian2Substrate(load_brian2_scenario(args.rate))
    result["image"] = args.image
    r_lif = lif.nudged(spec, x1, y1, record=True)
    r_rate = rate.nudged(spec, x1, y1, record=True)
    L = len([ls for ls in spec.layers if not ls.readout])
    fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    t_free = lif.scenario.brian2.t_free_ms
    offset = 0
    for k in range(L):  # every dynamic layer, stacked; the output layer in red
        ts, idx = r_lif.traces[f"t_spikes{k}"] * 1e3, r_lif.traces[f"spikes{k}"]
        ax[0].plot(ts, idx + offset, "|" if k == L - 1 else ",", ms=2, color="C3" if k == L - 1 else "k")
        offset += int(spec.layers[k].out_shape[0]) + 20
    ax[0].set_ylabel("neuron (layers stacked; output in red)")
    ax[0].set_title(f"LIF network, test image {args.image} (label {labels[args.image]}): spikes")
    tt, tr = r_lif.traces[f"t_state{L - 1}"] * 1e3, r_lif.traces[f"state{L - 1}"]
    for j in range(n_out):
        ax[1].plot(tt, tr[j], lw=1.5 if j == labels[args.image] else 0.7, label=str(j))
    ax[1].set_ylabel("output trace r (LIF)")
    ax[1].legend(ncol=5, fontsize=7)
    tt, tr = r_rate.traces[f"t_state{L - 1}"] * 1e3, r_rate.traces[f"state{L - 1}"]
    for j in range(n_out):
        ax[2].plot(tt, tr[j], lw=1.5 if j == labels[args.image] else 0.7)
    ax[2].set_ylabel("output state s (rate model)")
    ax[2].set_xlabel("time (ms); the nudged phase starts at the dashed (LIF) and dotted (rate model) line")
    for a in ax:
        a.axvline(t_free, ls="--", color="grey")
        if a is not ax[0]:
            a.axvline(rate.scenario.brian2.t_free_ms, ls=":", color="grey")
    fig.tight_layout()
    with atomic_path(out / "brian2_phases.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    # --- accuracy against free-phase time
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ref = float((ref_out.argmax(1) == labels).mean())
    # the LIF outputs are spike counts over a sliding window: 20 ms here, to see the first tens of ms
    lif_fast = Brian2Substrate(load_brian2_scenario(args.lif, ["lif.read_ms=20"]))
    for name, sub in (("rate", rate), ("lif", lif_fast)):
        t, scores = sub.output_trajectory(spec, x, every_ms=1.0)
        acc = (scores.argmax(2) == labels[None, :]).mean(1)
        result[f"accuracy_vs_time_{name}"] = {"t_ms": (t * 1e3).tolist(), "accuracy": acc.tolist()}
        ax[0].plot(t * 1e3, 100 * acc, "--" if name == "lif" else "-", lw=2 if name == "lif" else 1,
                   label=f"{name} ({sub.target})" + (", 20 ms count window" if name == "lif" else ""))
    ax[0].axhline(100 * ref, ls="--", color="grey", label="torch reference")
    result["reference_accuracy"] = ref
    ax[0].set_xlabel("simulated free-phase time (ms)")
    ax[0].set_ylabel(f"accuracy on {args.n} MNIST test images (%)")
    ax[0].set_xscale("log")
    ax[0].set_ylim(0, 100)
    ax[0].legend()

    # --- C-EP plasticity against the torch update, against the nudged-phase duration
    lrs = [args.eta] * len(spec.layers)
    beta = spec.beta
    reference = cep_reference(spec, x1, y1, beta, 10 * spec.T_nudge, lrs)
    # the LIF traces p start at 0: a free phase of 10 τ_p lets them settle before the plasticity starts
    settle = {"rate": [], "lif": [f"brian2.t_free_ms={10 * lif.scenario.lif.tau_plast_ms}"]}
    for name, card in (("rate", args.rate), ("lif", args.lif)):
        durations = [25.0, 50.0, 100.0, 200.0, 400.0, 800.0]
        cos, per_layer = [], []
        for d in durations:
            sub = Brian2Substrate(load_brian2_scenario(card, [*settle[name], f"brian2.t_nudge_ms={d}"]))
            dw = sub.nudged(spec, x1, y1, lrs=lrs).delta_w
            cos.append(cosine(dw, reference))
            per_layer.append([cosine([a], [b]) for a, b in zip(dw, reference)])
        result[f"cep_cosine_vs_nudge_{name}"] = {"t_nudge_ms": durations, "cosine": cos, "per_layer": per_layer}
        ax[1].plot(durations, cos, "o-", label=name)
    ax[1].set_xscale("log")
    ax[1].set_xticks(durations, [f"{d:g}" for d in durations])
    ax[1].minorticks_off()
    ax[1].set_xlabel("nudged-phase duration (ms)")
    ax[1].set_ylabel("cosine(ΔW brian2 plasticity, ΔW torch C-EP)")
    ax[1].set_title(f"test image {args.image}, β = {beta}, η = {args.eta:g}")
    ax[1].legend()
    fig.tight_layout()
    with atomic_path(out / "brian2_time.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    write_text(out / "brian2_figures.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    for k, v in result.items():
        if k.startswith("cep_cosine"):
            print(k, [f"{c:.3f}" for c in v["cosine"]], "per layer", [[f"{c:.3f}" for c in pl] for pl in v["per_layer"]])
        elif k.startswith("accuracy_vs"):
            print(k, "final", v["accuracy"][-1])


if __name__ == "__main__":
    main()

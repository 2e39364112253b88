"""The GDU check of Ernoult et al. 2019 (Theorem 1; docs/math.md §GDU): `neurohw gdu`.

On a small fully connected net in float64 whose free phase has converged (s_t = s* for the last
steps of the T = T_free free steps), EP's updates at nudged step t = 0 … T_nudge−1

    ΔEP_s(t) = (1/(β₂−β₁)) [(s^{β₂}_{t+1} − s^{β₂}_t) − (s^{β₁}_{t+1} − s^{β₁}_t)]
    ΔEP_θ(t) = (1/(β₂−β₁)) [(∂Φ/∂θ(s^{β₂}_{t+1}) − ∂Φ/∂θ(s^{β₂}_t)) − (same at β₁)]

tend, as β → 0, to BPTT's gradients of L = ℓ(s_T) (ℓ summed over the batch)

    ΔBPTT_s(t) = −∂L/∂s_{T−t},    ΔBPTT_θ(t) = −∂L/∂θ_{T−t}

where θ_k is the copy of θ used by step k (the step that produces s_k from s_{k−1}). The nudged
trajectories start from s^β_0 = s*; for the one-sided estimator the β₁ = 0 trajectory stays at s*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurohw.config import apply_overrides, build_dataclass
from neurohw.core.activations import ACTIVATIONS
from neurohw.dynamics import relax
from neurohw.errors import ConfigError
from neurohw.learning.base import BetaSampler
from neurohw.nets.layered import LayeredNet, build_fc

FORMAT = "neurohw-gdu"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GDUConfig:
    activation: str = field(default="tanh", metadata={"doc": "activation ρ (registry name)"})
    beta: float = field(default=0.01, metadata={"doc": "nudging strength β"})
    T_free: int = field(default=300, metadata={"doc": "free steps T (the BPTT horizon)"})
    T_nudge: int = field(default=20, metadata={"doc": "nudged steps compared (≤ T_free)"})
    estimator: str = field(default="one-sided", metadata={"doc": "one-sided | random-sign | symmetric"})
    seed: int = field(default=0, metadata={"doc": "seed of weights, inputs, targets and the sign of β"})
    sizes: tuple[int, ...] = field(default=(10, 24, 16, 5), metadata={"doc": "layer sizes size_0 … size_N"})
    batch_size: int = field(default=4, metadata={"doc": "samples B"})
    init_gain: float = field(default=0.5, metadata={"doc": "factor on PyTorch's default init (small: contracting)"})

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation '{self.activation}' is not registered; valid: {', '.join(ACTIVATIONS.names())}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not 1 <= self.T_nudge <= self.T_free:
            raise ConfigError(f"need 1 ≤ T_nudge ≤ T_free, got T_nudge = {self.T_nudge}, T_free = {self.T_free}")
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ConfigError(f"sizes needs at least two positive layer sizes, got {self.sizes}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")


def gdu_config(overrides: list[str] | tuple[str, ...] = ()) -> GDUConfig:
    return build_dataclass(GDUConfig, apply_overrides({}, list(overrides), GDUConfig))


@dataclass
class GDUResult:
    config: GDUConfig
    betas: tuple[float, float]
    weights: dict[str, np.ndarray]  # W{n}, b{n}
    x: np.ndarray
    y: np.ndarray
    ep: dict[str, np.ndarray]  # W{n}, b{n}, s{n}, each (T_nudge, ...)
    bptt: dict[str, np.ndarray]
    converged: float  # max |s_T − s_{T−1}| of the free phase

    def relative_errors(self) -> dict[str, float]:
        """‖ΔEP − ΔBPTT‖ / ‖ΔBPTT‖ per tensor, over all nudged steps."""
        return {k: float(np.linalg.norm(self.ep[k] - self.bptt[k]) / max(np.linalg.norm(self.bptt[k]), 1e-300)) for k in self.ep}

    def sign_agreement(self, rel_floor: float = 1e-6) -> dict[str, float]:
        """Fraction of entries where ΔEP and ΔBPTT have the same sign, among the entries with
        |ΔBPTT| > rel_floor·max|ΔBPTT| (smaller ones are rounding noise)."""
        out = {}
        for k in self.ep:
            b = self.bptt[k]
            mask = np.abs(b) > rel_floor * np.abs(b).max()
            out[k] = float((np.sign(self.ep[k][mask]) == np.sign(b[mask])).mean()) if mask.any() else 1.0
        return out

    def max_relative_error(self) -> float:
        return max(self.relative_errors().values())


class _Stepper(nn.Module):
    """One closed-form step as a module, so that `functional_call` can run it with a copy θ_k."""

    def __init__(self, net: LayeredNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, state: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.net.step(self.net.input_drive(x), state)


def ep_updates(net: LayeredNet, x, y, s_star, betas, T_nudge) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per nudged step: EP's neural updates (per layer) and weight updates (ordered as param_list)."""
    b1, b2 = betas
    x_drive = net.input_drive(x)

    def trajectory(beta: float) -> list[list[torch.Tensor]]:
        states = [s_star]
        for _ in range(T_nudge):
            states.append(net.step(x_drive, states[-1], y, beta))
        return states

    traj2 = trajectory(b2)
    traj1 = trajectory(b1) if b1 != 0.0 else [s_star] * (T_nudge + 1)
    g2 = [net.phi_param_grads(x, s, y, b2) for s in traj2]
    g1 = [net.phi_param_grads(x, s, y, b1) for s in traj1]
    inv = 1.0 / (b2 - b1)
    neural, weights = [], []
    for t in range(T_nudge):
        neural.append([((a1 - a0) - (c1 - c0)) * inv for a1, a0, c1, c0 in zip(traj2[t + 1], traj2[t], traj1[t + 1], traj1[t])])
        weights.append([((a1 - a0) - (c1 - c0)) * inv for a1, a0, c1, c0 in zip(g2[t + 1], g2[t], g1[t + 1], g1[t])])
    return neural, weights


def bptt_gradients(net: LayeredNet, x, y, T: int, K: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """−∂L/∂s_{T−t} and −∂L/∂θ_{T−t} for t = 0 … K−1, with a parameter copy θ_k per step k."""
    stepper = _Stepper(net)
    names = [n for n, _ in stepper.named_parameters()]
    base = [p.detach() for _, p in stepper.named_parameters()]
    thetas = {k: [p.clone().requires_grad_(True) for p in base] for k in range(T - K + 1, T + 1)}
    state = net.init_state(x)
    kept: dict[int, list[torch.Tensor]] = {}
    with torch.enable_grad():
        for k in range(1, T + 1):
            params = thetas.get(k, base)
            state = torch.func.functional_call(stepper, dict(zip(names, params)), (x, state))
            if k > T - K:
                for s in state:
                    s.retain_grad()
                kept[k] = state
        loss = net.loss(state, y).sum()
        loss.backward()
    # parameter copies are in named_parameters order; map them to param_list order
    order = {id(p): i for i, (_, p) in enumerate(stepper.named_parameters())}
    index = [order[id(p)] for p in net.param_list()]
    neg = lambda t: -t.grad if t.grad is not None else torch.zeros_like(t)  # None: L does not depend on it
    neural = [[neg(s) for s in kept[T - t]] for t in range(K)]
    weights = [[neg(thetas[T - t][i]) for i in index] for t in range(K)]
    return neural, weights


def compute_gdu(cfg: GDUConfig) -> GDUResult:
    """Run the GDU check of `cfg` in float64 on the CPU."""
    gen = torch.Generator().manual_seed(cfg.seed)
    net = build_fc(cfg.sizes, cfg.activation, "mse", gains=[cfg.init_gain], generator=gen).double()
    x = torch.rand(cfg.batch_size, cfg.sizes[0], generator=gen, dtype=torch.float64)
    labels = torch.randint(0, cfg.sizes[-1], (cfg.batch_size,), generator=gen)
    y = torch.nn.functional.one_hot(labels, cfg.sizes[-1]).double()
    betas = BetaSampler(cfg.beta, cfg.estimator, cfg.seed).draw()
    with torch.no_grad():
        x_drive = net.input_drive(x)
        s_before = relax(net, x_drive, net.init_state(x), cfg.T_free - 1)
        s_star = net.step(x_drive, s_before)
        converged = max(float((a - b).abs().max()) for a, b in zip(s_star, s_before))
        ep_s, ep_w = ep_updates(net, x, y, s_star, betas, cfg.T_nudge)
    bp_s, bp_w = bptt_gradients(net, x, y, cfg.T_free, cfg.T_nudge)

    def stack(per_step: list[list[torch.Tensor]], i: int) -> np.ndarray:
        return torch.stack([step[i] for step in per_step]).detach().cpu().numpy()

    def collect(neural, weights) -> dict[str, np.ndarray]:
        out = {}
        for n in range(len(net.layers)):
            out[f"W{n}"], out[f"b{n}"] = stack(weights, 2 * n), stack(weights, 2 * n + 1)
            out[f"s{n}"] = stack(neural, n)
        return out

    weights = {}
    for n, layer in enumerate(net.layers):
        weights[f"W{n}"] = layer.weight.detach().cpu().numpy()
        weights[f"b{n}"] = layer.bias.detach().cpu().numpy()
    return GDUResult(
        cfg, betas, weights, x.numpy(), y.numpy(), collect(ep_s, ep_w), collect(bp_s, bp_w), converged
    )


def write_h5(result: GDUResult, path: str | Path) -> None:
    """The GDU file (format neurohw-gdu v1; layout in docs/math.md §GDU), written atomically."""
    import h5py

    from neurohw.io.atomic import atomic_path

    cfg = result.config
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "activation": cfg.activation,
                    "T_free": cfg.T_free,
                    "T_nudge": cfg.T_nudge,
                    "beta": cfg.beta,
                    "estimator": cfg.estimator,
                    "beta_1": result.betas[0],
                    "beta_2": result.betas[1],
                    "seed": cfg.seed,
                    "free_phase_residual": result.converged,
                }
            )
            for name, arr in result.weights.items():
                f.create_dataset(f"weights/{name}", data=arr)
            f.create_dataset("x", data=result.x)
            f.create_dataset("y", data=result.y)
            rel, sign = result.relative_errors(), result.sign_agreement()
            for group, data in (("ep", result.ep), ("bptt", result.bptt)):
                for name, arr in data.items():
                    ds = f.create_dataset(f"{group}/{name}", data=arr)
                    ds.attrs["axes"] = "time, " + ("batch, unit" if name.startswith("s") else "parameter shape")
            for name in result.ep:
                f[f"ep/{name}"].attrs["relative_error_to_bptt"] = rel[name]
                f[f"ep/{name}"].attrs["sign_agreement_with_bptt"] = sign[name]


def figure(result: GDUResult, n_curves: int = 3):
    """The matplotlib figure of `plot`: per layer, the EP updates (lines) and the BPTT gradients
    (open circles) through the nudged steps for the `n_curves` neurons (top row) and synapses (bottom
    row) with the largest updates, one color per entry; axis labels on every panel, one legend for the
    two markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n_layers = len(result.config.sizes) - 1
    fig, axes = plt.subplots(2, n_layers, figsize=(4 * n_layers, 6.5), squeeze=False)
    t = np.arange(result.config.T_nudge)
    for n in range(n_layers):
        for row, key, label, what in ((0, f"s{n}", f"neurons of layer {n + 1}", f"ΔEP_s, ΔBPTT_s (s of layer {n + 1})"),
                                      (1, f"W{n}", f"synapses W{n}", f"ΔEP_W, ΔBPTT_W (W{n})")):
            ax = axes[row][n]
            ep, bp = result.ep[key], result.bptt[key]
            flat_ep, flat_bp = ep.reshape(len(t), -1), bp.reshape(len(t), -1)
            picks = np.argsort(-np.abs(flat_bp).max(0))[:n_curves]  # the entries with the largest updates
            for j, i in enumerate(picks):
                color = f"C{j}"
                ax.plot(t, flat_ep[:, i], "-", color=color)
                ax.plot(t, flat_bp[:, i], "o", color=color, markersize=3.5, mfc="none")
            ax.set_title(f"{label}: rel. error {result.relative_errors()[key]:.2e}", fontsize=9)
            ax.set_xlabel("t (nudged step)")
            ax.set_ylabel(what, fontsize=8)
    handles = [Line2D([], [], color="0.2", linestyle="-", label="EP: ΔEP(t) (lines)"),
               Line2D([], [], color="0.2", linestyle="none", marker="o", mfc="none", label="BPTT: ΔBPTT(t) = −∂L/∂· (open circles)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8,
               title=f"one color per neuron or synapse (the {n_curves} largest updates)", title_fontsize=8)
    cfg = result.config
    fig.suptitle(f"GDU check: {cfg.activation}, β={cfg.beta:g} ({cfg.estimator}), T={cfg.T_free}, K={cfg.T_nudge}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot(result: GDUResult, path: str | Path, n_curves: int = 3) -> None:
    """Write `figure(result)` as a PNG."""
    import matplotlib.pyplot as plt

    from neurohw.io.atomic import atomic_path

    fig = figure(result, n_curves)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def report(result: GDUResult) -> str:
    rel, sign = result.relative_errors(), result.sign_agreement()
    lines = [
        f"GDU check (Ernoult et al. 2019, Theorem 1): {result.config.activation}, β = {result.config.beta:g} "
        f"({result.config.estimator}: β₁ = {result.betas[0]:g}, β₂ = {result.betas[1]:g}), "
        f"T_free = {result.config.T_free}, T_nudge = {result.config.T_nudge}, float64",
        f"free phase residual max|s_T − s_(T−1)| = {result.converged:.2e}"
        + ("" if result.converged < 1e-10 else "  (not converged: the theorem assumes s_t = s* — raise T_free)"),
        f"{'tensor':8s} {'rel. error':>12s} {'sign agreement':>15s}",
    ]
    for k in sorted(rel, key=lambda s: (s[0], int(s[1:]))):
        lines.append(f"{k:8s} {rel[k]:12.3e} {100 * sign[k]:14.2f}%")
    if not math.isfinite(result.max_relative_error()):
        lines.append("non-finite updates: the dynamics diverged")
    return "\n".join(lines)

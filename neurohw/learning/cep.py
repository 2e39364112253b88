"""Continual EP and Continual Vector-Field EP (Ernoult et al. 2020; docs/math.md §C-EP, §C-VF).

C-EP applies the EP update at every step of a one-sided nudged phase, with the parameters changing
as the state moves (the dynamics at step t uses θ_t):

    θ_{t+1} = θ_t + (η/β) · (∂Φ^β/∂θ(x, s_{t+1}, θ_t) − ∂Φ^{β_t}/∂θ(x, s_t, θ_t))      (eq. C-EP)

with β_0 = 0 and β_t = β for t ≥ 1, so that the sum over the phase telescopes to EP's update at fixed θ
(for the MSE cost ∂Φ^β/∂θ = ∂Φ/∂θ and this is exactly the paper's rule; with the CE readout the β_0 = 0
term is what makes the readout learn). The learning rate η is the optimizer's: `.grad` is set to
−(1/β)(…)/batch_size and `apply()` (an optimizer step) is called at every nudged step.

C-VF replaces the tied feedback by untied weights and the update by the local vector-field rule
(post-synaptic change × pre-synaptic activity at step t):

    ΔW_n = (η/β) (s_{n+1,t+1} − s_{n+1,t}) s_{n,t}ᵀ,   Δb_n = (η/β)(s_{n+1,t+1} − s_{n+1,t}),
    ΔW^b_n = r_b (η/β) s_{n+1,t} (s_{n,t+1} − s_{n,t})ᵀ                             (eq. C-VF)

where W^b_n (`weight_backward`, same shape as W_n) carries s_{n+1} back to s_n as s_{n+1}·W^b_n, and
r_b (`feedback_ratio`, learner.feedback_lr_ratio, 1 in the authors' code) scales the feedback weights' update
(with SGD and no weight decay: their learning rate is r_b·η).
This ungated rule is the one of the authors' code (ernoult/continualEP `VFdisc.computeGradients`,
and Laborieux et al.'s `VF_MLP`), and the default. With `rule = "vector-field"` the update is instead
Δθ = (η/β) (∂F/∂θ(x, s_t, θ_t))ᵀ (s_{t+1} − s_t) for the step s_{t+1} = F(x, s_t, θ_t), the vector-field
rule of Scellier et al. 2018 written for this discrete step: the same products with each post-synaptic
change gated by the slope ρ'(a_t) of its neuron (eq. C-VF-vf). It is neurohw's option, not the authors'.
"""

from __future__ import annotations

import abc
import math

import torch

from neurohw.choices import CONTINUAL_ESTIMATORS, VF_RULES
from neurohw.dynamics import FiniteFlags, check_finite
from neurohw.errors import ConfigError
from neurohw.learning.base import (
    Apply, BetaSampler, RelaxationPredictor, batch_stats, check_phases, free_phase, operand_dtype, set_grads,
)
from neurohw.nets.layered import LayeredNet, Scalar
from neurohw.nets.layers import fold_scale, scaled


class _Continual(RelaxationPredictor, abc.ABC):
    """The continual loop shared by C-EP and C-VF: one nudged phase (one-sided, random-sign) or two
    (symmetric: +β then −β, each from the free state s*, eq. C-EP-sym), an update at every step."""

    def __init__(
        self, beta: float, T_free: int, T_nudge: int, estimator: str = "one-sided", *, seed: int = 0, T_eval: int = 0,
        relaxation: str = "sync", precision: str = "fp32",
    ):
        check_phases(beta, T_free, T_nudge, relaxation)
        self.beta, self.T_free, self.T_nudge, self.T_eval = float(beta), int(T_free), int(T_nudge), int(T_eval)
        self.sampler = BetaSampler(beta, estimator, seed, CONTINUAL_ESTIMATORS)
        self.relaxation, self.operands = relaxation, operand_dtype(precision)

    @property
    def n_updates(self) -> int:
        """Per-step updates (optimizer steps) per batch: T_nudge per nudged phase."""
        return self.T_nudge * (2 if self.sampler.estimator == "symmetric" else 1)

    @abc.abstractmethod
    def updates(self, net: LayeredNet, x, x_drive, y, s, s_next, beta: float, t: int) -> list[torch.Tensor]:
        """The update of step t (without η/β), summed over the batch, ordered as `param_list()`."""

    def check_net(self, net: LayeredNet) -> None:
        """Refuse a net this learner cannot train (before any work is done)."""

    def flag_names(self) -> tuple[str, ...]:
        """The phases a captured update flags (see dynamics.FiniteFlags)."""
        return ("free", "nudged")

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        return self.update(net, x, y, self.sampler.draw_sign(), apply)

    @torch.no_grad()
    def update(
        self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, sign: Scalar, apply: Apply,
        flags: FiniteFlags | None = None, beta: Scalar | None = None,
    ) -> dict[str, torch.Tensor]:
        """One batch with the sign of β given (a number, or a tensor on the device): `apply` is
        called after each of the `n_updates` per-step updates; returns the batch statistics at s*.
        `beta` replaces |β| (a population member's own). The symmetric estimator runs the +β phase,
        then the −β phase from s* again, each update scaled by ½ (eq. C-EP-sym)."""
        net.check_batch(x, y)
        self.check_net(net)
        params, (b1, b2) = net.param_list(), self.sampler.betas(sign, beta)
        symmetric = self.sampler.estimator == "symmetric"
        ops = self.operands
        x_drive, s_star = free_phase(net, x, self.T_free, order=self.relaxation, flags=flags, operands=ops)
        stats = batch_stats(net, s_star, y)
        for k, beta in enumerate((b2, b1) if symmetric else (b2,)):
            s = s_star
            scale = -1.0 / ((2.0 if symmetric else 1.0) * beta * x.shape[0])
            for t in range(self.T_nudge):
                if t > 0 or k > 0:
                    x_drive = net.input_drive(x, ops)  # θ changed at the previous step
                if self.relaxation == "sync":
                    s_next = net.step(x_drive, s, y, beta, ops)
                else:
                    s_next = net.phase(x_drive, y, beta, fold=False, operands=ops).sweep(s)
                set_grads(params, self.updates(net, x, x_drive, y, s, s_next, beta, t, scale))
                apply()
                s = s_next
            if flags is not None:
                flags.record("nudged", s)
            else:
                check_finite(s, f"{self.name} nudged")
        return stats


class CEP(_Continual):
    """C-EP (eq. C-EP): ∂Φ^β/∂θ(s_{t+1}) − ∂Φ^{β_t}/∂θ(s_t), both at θ_t, β_0 = 0."""

    name = "cep"

    def check_net(self, net):
        if not net.symmetric:
            raise ConfigError("C-EP needs tied weights; use learner.algorithm = 'cvf' for untied feedback")

    def updates(self, net, x, x_drive, y, s, s_next, beta, t, scale=1.0):
        return net.phi_param_grads_diff(x, s_next, s, y, beta, beta if t > 0 else 0.0, scale=scale)


class CVF(_Continual):
    """C-VF: untied feedback weights and the local update of eq. C-VF (or eq. C-VF-vf)."""

    name = "cvf"

    def __init__(self, *args, rule: str = "activity", feedback_ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not (math.isfinite(feedback_ratio) and feedback_ratio >= 0.0):
            raise ConfigError(f"learner.feedback_lr_ratio must be a finite number ≥ 0, got {feedback_ratio}")
        self.feedback_ratio = float(feedback_ratio)
        if rule not in VF_RULES:
            raise ConfigError(f"learner.vf_rule must be one of {', '.join(VF_RULES)}, got {rule!r}")
        if rule == "vector-field" and self.relaxation != "sync":
            raise ConfigError(
                "learner.vf_rule = 'vector-field' is the VJP of a synchronous step (eq. C-VF-vf); "
                "with learner.relaxation = 'async' use vf_rule = 'activity'"
            )
        self.rule = rule

    def updates(self, net, x, x_drive, y, s, s_next, beta, t, scale=1.0):
        gates = None
        if self.rule == "vector-field":
            gates = [net.activation.slope(a) for a in net.pre_activations(x_drive, s, y, beta)]
        return vf_updates(net, x, s, s_next, gates, self.feedback_ratio, scale)


class ContinualDecay:
    """The `apply` of a continual learner with weight decay λ (docs/math.md eq. C-EP-decay).

    C-EP and C-VF step the optimizer T = `n_updates` times per batch (T_nudge per nudged phase). Decaying by λ at each of them would
    shrink θ T times as much as one EP step does, and would decay the update of step k again at each
    of the T − 1 − k steps that follow it. For a parameter group of learning rate η, every step instead
    decays by the factor a = (1 − η·λ)^(1/T) (SGD weight decay (1 − a)/η) and the gradient of step k
    (0-based) is divided by a^(T−1−k), so that with plain SGD a batch gives exactly

        θ_T = (1 − η·λ)·θ_0 − η·Σ_k g_k,

    EP's decayed step when Σ_k g_k is EP's gradient (η → 0), as in Laborieux et al. 2021's code. The
    factors follow the learning rates of the groups (the scheduler changes them between epochs).
    With momentum μ the buffer carries each step's decayed gradient into the later steps of the phase
    and into the next batches (the local-in-time rule then acts through the buffer, as with any
    momentum); the decay correction is exact for μ = 0 only.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weight_decay: float, T: int, step=None):
        if not weight_decay >= 0.0:
            raise ConfigError(f"train.weight_decay must be ≥ 0, got {weight_decay}")
        self.optimizer, self.weight_decay, self.T = optimizer, float(weight_decay), int(T)
        self._step = step if step is not None else optimizer.step
        self.k = 0
        self._factors: list[float] = []

    def __call__(self) -> None:
        groups = self.optimizer.param_groups
        if self.k == 0:  # first nudged step of a batch: this batch's per-step decay of every group
            self._factors = []
            for i, g in enumerate(groups):
                lr = float(g["lr"])
                if lr * self.weight_decay >= 1.0:
                    raise ConfigError(
                        f"train.weight_decay = {self.weight_decay} with the learning rate {lr} of layer {i}: "
                        "η·λ ≥ 1 would decay the weights past zero in one batch"
                    )
                a = (1.0 - lr * self.weight_decay) ** (1.0 / self.T)
                g["weight_decay"] = (1.0 - a) / lr if lr > 0.0 else 0.0
                self._factors.append(a)
        for g, a in zip(groups, self._factors):
            factor = a ** -(self.T - 1 - self.k)
            if factor != 1.0:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(factor)
        self._step()
        self.k = (self.k + 1) % self.T


def vf_updates(
    net: LayeredNet,
    x: torch.Tensor,
    s: list[torch.Tensor],
    s_next: list[torch.Tensor],
    gates: list[torch.Tensor] | None = None,
    feedback_ratio: float = 1.0,
    scale: Scalar = 1.0,
) -> list[torch.Tensor]:
    """`scale` times the local updates of eq. C-VF (without η/β), summed over the batch, ordered as
    `param_list()`.

    `gates` (ρ'(a_t) per state, eq. C-VF-vf) multiply each post-synaptic change; None: eq. C-VF.
    `feedback_ratio` (r_b) multiplies the feedback weights' updates. `scale` is a number or a 0-dim
    tensor; in a population it multiplies the post-synaptic changes (B × n), a factor of every update
    (`fold_scale`).
    """
    pre = [x, *s]
    d_post = [b - a for a, b in zip(s, s_next)]
    if gates is not None:
        d_post = [d.mul_(g) for d, g in zip(d_post, gates)]
    fold = fold_scale(scale, d_post[0])
    if fold:
        d_post = [d.mul_(scale) for d in d_post]
    grads: list[torch.Tensor] = []
    for i, layer in enumerate(net.layers):
        grads += [d_post[i].t() @ pre[i].flatten(1), d_post[i].sum(0)]
        if layer.weight_backward is not None:
            fb = s[i].t() @ d_post[i - 1]
            grads.append(fb if feedback_ratio == 1.0 else fb.mul_(feedback_ratio))
    return grads if fold else scaled(grads, scale)


def weight_angles_deg(net: LayeredNet) -> list[float]:
    """Angle between forward weights W_n and feedback weights W^b_n, per layer that has both."""
    out = []
    for layer in net.layers:
        wb = getattr(layer, "weight_backward", None)
        if wb is not None:
            w = layer.weight.detach().flatten().double()
            v = wb.detach().flatten().double()
            cos = float((w @ v) / (w.norm() * v.norm()).clamp_min(1e-300))
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    return out


def set_initial_angle(net: LayeredNet, psi_deg: float, generator: torch.Generator) -> None:
    """W^b_n = W_n with each entry's sign flipped with probability ½(1 − cos ψ) (expected angle ψ)."""
    if not 0.0 <= psi_deg <= 180.0:
        raise ConfigError(f"learner.psi_deg must lie in [0, 180], got {psi_deg}")
    p_flip = 0.5 * (1.0 - math.cos(math.radians(psi_deg)))
    with torch.no_grad():
        for layer in net.layers:
            wb = getattr(layer, "weight_backward", None)
            if wb is not None:
                flip = torch.rand(wb.shape, generator=generator) < p_flip
                sign = 1.0 - 2.0 * flip.to(wb.dtype)
                wb.copy_(layer.weight * sign.to(wb.device))

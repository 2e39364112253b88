"""Equilibrium Propagation (docs/math.md §EP).

After the free phase to s*, nudged phases at β₁ and β₂ (each T_nudge steps from s*) give

    Δθ = (1/(β₂ − β₁)) · (∂Φ^{β₂}/∂θ(s^{β₂}) − ∂Φ^{β₁}/∂θ(s^{β₁}))          (eq. EP)

with (β₁, β₂) from the estimator (`BetaSampler`). The gradient written into `.grad` is
−Δθ / batch_size. `step` draws the sign of β on the host and runs `update`; a captured update
(neurohw/program.py) runs the same `update` with the drawn sign a tensor on the device. `engine="autograd"` computes the same estimate with ∂Φ/∂s and ∂Φ/∂θ by autograd
of Φ (the research-code baseline of `neurohw bench`; tests check that both engines agree).
"""

from __future__ import annotations

import torch

from neurohw.dynamics import FiniteFlags, relax, relax_autograd
from neurohw.errors import ConfigError
from neurohw.learning.base import (
    Apply, BetaSampler, RelaxationPredictor, batch_stats, check_phases, free_phase, operand_dtype, phase_name, set_grads,
)
from neurohw.nets.layered import LayeredNet, Scalar, State, _is_zero
from neurohw.nets.layers import scaled

ENGINES = ("closed_form", "autograd")


class EP(RelaxationPredictor):
    name = "ep"

    def __init__(
        self,
        beta: float,
        T_free: int,
        T_nudge: int,
        estimator: str = "one-sided",
        *,
        seed: int = 0,
        T_eval: int = 0,
        engine: str = "closed_form",
        relaxation: str = "sync",
        precision: str = "fp32",
    ):
        check_phases(beta, T_free, T_nudge, relaxation)
        if engine not in ENGINES:
            raise ConfigError(f"unknown EP engine '{engine}'; valid: {', '.join(ENGINES)}")
        if engine == "autograd" and relaxation != "sync":
            raise ConfigError("the autograd EP engine (the research-code baseline) relaxes synchronously only")
        self.beta, self.T_free, self.T_nudge, self.T_eval = float(beta), int(T_free), int(T_nudge), int(T_eval)
        self.sampler = BetaSampler(beta, estimator, seed)
        self.engine, self.relaxation = engine, relaxation
        self.operands = operand_dtype(precision)
        if engine == "autograd" and self.operands is not None:
            raise ConfigError("the autograd EP engine (the research-code baseline) runs in full precision only")

    @torch.no_grad()
    def estimate(
        self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, betas: tuple[Scalar, Scalar], scale: Scalar = 1.0,
        *, flags: FiniteFlags | None = None,
    ) -> tuple[list[torch.Tensor], State]:
        """scale · Δθ of eq. EP (Δθ summed over the batch), and the free fixed point s*. A tensor β₂
        (a sign drawn on the device) keeps the whole estimate on the device; with `flags` the phases'
        end states are flagged on the device instead of checked on the host."""
        b1, b2 = betas
        inv = scale / (b2 - b1)
        if self.engine == "autograd":
            s_free = relax_autograd(net, x, net.init_state(x), self.T_free, phase="free")
            nudge = lambda b: relax_autograd(net, x, s_free, self.T_nudge, y, b, phase=f"nudged (beta={b:g})")
            g1 = _phi_param_grads_autograd(net, x, s_free if b1 == 0.0 else nudge(b1), y, b1)
            g2 = _phi_param_grads_autograd(net, x, nudge(b2), y, b2)
            return scaled([a.sub_(b) for a, b in zip(g2, g1)], inv), s_free
        order, ops = self.relaxation, self.operands
        x_drive, s_free = free_phase(net, x, self.T_free, order=order, flags=flags, operands=ops)

        def nudge(b: Scalar, kind: str) -> State:
            name = kind if flags is not None else phase_name(kind, b)
            return relax(net, x_drive, s_free, self.T_nudge, y, b, phase=name, order=order, flags=flags, operands=ops)

        s1 = s_free if _is_zero(b1) else nudge(b1, "nudged (-beta)")
        return net.phi_param_grads_diff(x, nudge(b2, "nudged"), s1, y, b2, b1, scale=inv), s_free

    def flag_names(self) -> tuple[str, ...]:
        """The phases a captured update flags (see dynamics.FiniteFlags)."""
        two = self.sampler.estimator == "symmetric"
        return ("free", "nudged (-beta)", "nudged") if two else ("free", "nudged")

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        return self.update(net, x, y, self.sampler.draw_sign(), apply)

    def update(
        self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, sign: Scalar, apply: Apply,
        flags: FiniteFlags | None = None, beta: Scalar | None = None,
    ) -> dict[str, torch.Tensor]:
        """One batch with the sign of β given (a number, or a tensor on the device): writes −Δθ/B into
        `.grad`, calls `apply` once, returns the batch statistics at s*. `beta` replaces |β| (a
        population member's own)."""
        net.check_batch(x, y)
        betas = self.sampler.betas(sign, beta)
        delta, s_free = self.estimate(net, x, y, betas, scale=-1.0 / x.shape[0], flags=flags)
        set_grads(net.param_list(), delta)
        apply()
        return batch_stats(net, s_free, y)


def _phi_param_grads_autograd(net: LayeredNet, x, state: State, y, beta: float) -> list[torch.Tensor]:
    params = net.param_list()
    with torch.enable_grad():
        grads = torch.autograd.grad(net.phi(x, state, y, beta), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]  # readout at β = 0

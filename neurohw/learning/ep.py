"""Equilibrium Propagation (docs/math.md §EP).

After the free phase to s*, nudged phases at β₁ and β₂ (each T_nudge steps from s*) give

    Δθ = (1/(β₂ − β₁)) · (∂Φ^{β₂}/∂θ(s^{β₂}) − ∂Φ^{β₁}/∂θ(s^{β₁}))          (eq. EP)

with (β₁, β₂) from the estimator (`BetaSampler`). The gradient written into `.grad` is
−Δθ / batch_size. `engine="autograd"` computes the same estimate with ∂Φ/∂s and ∂Φ/∂θ by autograd
of Φ (the research-code baseline of `neurohw bench`; tests check that both engines agree).
"""

from __future__ import annotations

import torch

from neurohw.dynamics import relax, relax_autograd
from neurohw.errors import ConfigError
from neurohw.learning.base import (
    Apply, BetaSampler, RelaxationPredictor, batch_stats, check_phases, free_phase, set_grads,
)
from neurohw.nets.layered import LayeredNet, State

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
    ):
        check_phases(beta, T_free, T_nudge)
        if engine not in ENGINES:
            raise ConfigError(f"unknown EP engine '{engine}'; valid: {', '.join(ENGINES)}")
        self.beta, self.T_free, self.T_nudge, self.T_eval = float(beta), int(T_free), int(T_nudge), int(T_eval)
        self.sampler = BetaSampler(beta, estimator, seed)
        self.engine = engine

    @torch.no_grad()
    def estimate(
        self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, betas: tuple[float, float], scale: float = 1.0
    ) -> tuple[list[torch.Tensor], State]:
        """scale · Δθ of eq. EP (Δθ summed over the batch), and the free fixed point s*."""
        b1, b2 = betas
        inv = scale / (b2 - b1)
        if self.engine == "autograd":
            s_free = relax_autograd(net, x, net.init_state(x), self.T_free, phase="free")
            nudge = lambda b: relax_autograd(net, x, s_free, self.T_nudge, y, b, phase=f"nudged (beta={b:g})")
            g1 = _phi_param_grads_autograd(net, x, s_free if b1 == 0.0 else nudge(b1), y, b1)
            g2 = _phi_param_grads_autograd(net, x, nudge(b2), y, b2)
            return self._scaled([a.sub_(b) for a, b in zip(g2, g1)], inv), s_free
        x_drive, s_free = free_phase(net, x, self.T_free)
        nudge = lambda b: relax(net, x_drive, s_free, self.T_nudge, y, b, phase=f"nudged (beta={b:g})")
        s1 = s_free if b1 == 0.0 else nudge(b1)
        return self._scaled(net.phi_param_grads_diff(x, nudge(b2), s1, y, b2, b1), inv), s_free

    @staticmethod
    def _scaled(tensors: list[torch.Tensor], factor: float) -> list[torch.Tensor]:
        return [t.mul_(factor) for t in tensors]

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        net.check_batch(x, y)
        delta, s_free = self.estimate(net, x, y, self.sampler.draw(), scale=-1.0 / x.shape[0])
        set_grads(net.param_list(), delta, 1.0)
        apply()
        return batch_stats(net, s_free, y)


def _phi_param_grads_autograd(net: LayeredNet, x, state: State, y, beta: float) -> list[torch.Tensor]:
    params = net.param_list()
    with torch.enable_grad():
        grads = torch.autograd.grad(net.phi(x, state, y, beta), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]  # readout at β = 0

"""Baselines trained by automatic differentiation (docs/math.md §BPTT, §BP).

* BPTT: the loss L = ℓ(s_T) after T = T_free steps of the same closed-form dynamics from s = 0,
  differentiated through the last `T_backprop` steps (0: all T steps; Ernoult et al. 2019 truncate
  to the length of EP's nudged phase).
* BP: the equivalent feedforward net s_{n+1} = ρ(D_n(s_n)) with the same layers and cost, trained by
  backprop.
Both write ∂(mean ℓ)/∂θ into `.grad`.
"""

from __future__ import annotations

import torch

from neurohw.errors import ConfigError
from neurohw.learning.base import Apply, RelaxationPredictor, batch_stats, set_grads
from neurohw.nets.layered import LayeredNet


class BPTT(RelaxationPredictor):
    name = "bptt"

    def __init__(self, T_free: int, *, T_backprop: int = 0, T_eval: int = 0):
        if T_free < 1 or not 0 <= T_backprop <= T_free:
            raise ConfigError(
                f"BPTT needs learner.T_free ≥ 1 and 0 ≤ learner.T_backprop ≤ T_free, got {T_free} and {T_backprop}"
            )
        self.T_free, self.T_backprop, self.T_eval = int(T_free), int(T_backprop), int(T_eval)

    def run(self, net: LayeredNet, x: torch.Tensor) -> list[torch.Tensor]:
        """The state after T_free steps, differentiable through the last T_backprop steps."""
        n_grad = self.T_backprop or self.T_free
        with torch.no_grad():
            x_drive = net.input_drive(x)
            s = net.init_state(x)
            for _ in range(self.T_free - n_grad):
                s = net.step(x_drive, s)
        x_drive = net.input_drive(x)
        for _ in range(n_grad):
            s = net.step(x_drive, s)
        return s

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        net.check_batch(x, y)
        params = net.param_list()
        with torch.enable_grad():
            s = self.run(net, x)
            grads = torch.autograd.grad(net.loss(s, y).mean(), params)
        set_grads(params, list(grads))
        apply()
        return batch_stats(net, [t.detach() for t in s], y)


class BP:
    name = "bp"

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        net.check_batch(x, y)
        params = net.param_list()
        with torch.enable_grad():
            s = net.feedforward(x)
            grads = torch.autograd.grad(net.loss(s, y).mean(), params)
        set_grads(params, list(grads))
        apply()
        return batch_stats(net, [t.detach() for t in s], y)

    @torch.no_grad()
    def predict(self, net: LayeredNet, x: torch.Tensor) -> torch.Tensor:
        return net.output(net.feedforward(x))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

"""Activation functions ρ, in an explicit registry (equations: docs/math.md §Activations).

Each activation has a differentiable torch form (used by BPTT, BP and the autograd reference), an
in-place torch form (used by the no-grad EP engine, which owns its buffers), and a numpy form (used by
the framework-free substrates and readers of exported files). Each is also written as
ρ(a) = g(κ·a + c) with an elementwise base g; the dense engine folds κ and c into its matrix products
and constant terms so that a step applies g alone (one in-place op per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from neurohw.core.registry import Registry


@dataclass(frozen=True)
class Activation:
    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    inplace_fn: Callable[[torch.Tensor], torch.Tensor]
    numpy_fn: Callable[[np.ndarray], np.ndarray]
    formula: str
    scale: float = 1.0  # κ in ρ(a) = g(κ·a + c)
    shift: float = 0.0  # c
    base_inplace: Callable[[torch.Tensor], torch.Tensor] | None = None  # g, in place (None: identity)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return self.torch_fn(a)

    def inplace(self, a: torch.Tensor) -> torch.Tensor:
        """ρ(a), overwriting a (a must not require grad)."""
        return self.inplace_fn(a)

    def numpy(self, a: np.ndarray) -> np.ndarray:
        return self.numpy_fn(a)

    def slope(self, a: torch.Tensor) -> torch.Tensor:
        """ρ'(a) elementwise, by autograd of the torch form (exact for every registered ρ)."""
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(self.torch_fn(a).sum(), a)
        return d


ACTIVATIONS: Registry[Activation] = Registry("activation")


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    """Overflow-free logistic with one exp (the analog kernels compute the same expression)."""
    a = np.asarray(a, dtype=np.float64)
    e = np.exp(-np.abs(a))
    return np.where(a >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


for _act in (
    Activation("tanh", torch.tanh, torch.tanh_, np.tanh, "tanh(a)", base_inplace=torch.tanh_),
    Activation(
        "hard_sigmoid",
        lambda a: a.clamp(0.0, 1.0),
        lambda a: a.clamp_(0.0, 1.0),
        lambda a: np.clip(a, 0.0, 1.0),
        "clamp(a, 0, 1)",
        base_inplace=lambda a: a.clamp_(0.0, 1.0),
    ),
    Activation(
        "hard_sigmoid_half",
        lambda a: (0.5 * a).clamp(0.0, 1.0),
        lambda a: a.mul_(0.5).clamp_(0.0, 1.0),
        lambda a: np.clip(0.5 * a, 0.0, 1.0),
        "clamp(a/2, 0, 1)",
        scale=0.5,
        base_inplace=lambda a: a.clamp_(0.0, 1.0),
    ),
    Activation(
        "sigmoid4",
        lambda a: torch.sigmoid(4.0 * a - 2.0),
        lambda a: a.mul_(4.0).sub_(2.0).sigmoid_(),
        lambda a: _np_sigmoid(4.0 * a - 2.0),
        "1 / (1 + exp(-4 (a - 1/2)))",
        scale=4.0,
        shift=-2.0,
        base_inplace=torch.sigmoid_,
    ),
    Activation("identity", lambda a: a, lambda a: a, lambda a: a, "a"),
    Activation(
        "elu",
        torch.nn.functional.elu,
        torch.nn.functional.elu_,
        lambda a: np.where(a > 0.0, a, np.expm1(np.minimum(a, 0.0))),  # no overflow for large a
        "a if a > 0 else exp(a) − 1",
        base_inplace=torch.nn.functional.elu_,
    ),
):
    ACTIVATIONS.register(_act.name, _act)


def get_activation(name: str, key: str = "net.activation") -> Activation:
    return ACTIVATIONS.get(name, key)

"""Activation functions ρ, in an explicit registry (equations: docs/math.md §Activations).

One entry per activation holds every form of it, so that a new activation is written in one place:

* `numpy_fn`: the numpy form (readers of exported files, the substrates' numpy twins);
* `torch_forms(torch)`: the differentiable torch form (BPTT, BP, the autograd reference), the in-place
  form (the no-grad EP engine, which owns its buffers) and the in-place base g of ρ(a) = g(κ·a + c)
  (the dense engine folds κ = `scale` and c = `shift` into its matrix products and constant terms, so
  that a step applies g alone). Built on first use: this module does not import torch;
* `kernel`: the scalar form compiled by numba into the analog kernels (plain Python on one float);
* `brian2`: the form as a Brian2 expression in `{u}`;
* `image`: the interval ρ maps into (the LIF neurons of the Brian2 substrate encode ρ ∈ [0, 1] as a rate).

A substrate refuses an activation whose form it needs is None, naming the activations that have one
(`form`); tests/unit/test_activations.py checks that every registered activation has every form and
that they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, NamedTuple

import numpy as np

from neurohw.core.registry import Registry
from neurohw.errors import ConfigError


class TorchForms(NamedTuple):
    fn: Callable  # ρ(a), differentiable
    inplace: Callable  # ρ(a), overwriting a
    base_inplace: Callable | None  # g in ρ(a) = g(κ·a + c), in place (None: identity)


@dataclass(frozen=True)
class Activation:
    name: str
    formula: str
    numpy_fn: Callable[[np.ndarray], np.ndarray]
    torch_forms: Callable[[Any], TorchForms]  # the torch module → its forms (module doc)
    kernel: Callable[[float], float] | None = None
    brian2: str | None = None
    image: tuple[float, float] = (-math.inf, math.inf)
    scale: float = 1.0  # κ in ρ(a) = g(κ·a + c)
    shift: float = 0.0  # c

    @cached_property
    def _torch(self) -> TorchForms:
        import torch

        return self.torch_forms(torch)

    @cached_property
    def torch_fn(self) -> Callable:
        return self._torch.fn

    @cached_property
    def inplace_fn(self) -> Callable:
        return self._torch.inplace

    @cached_property
    def base_inplace(self) -> Callable | None:
        return self._torch.base_inplace

    def __call__(self, a):
        return self.torch_fn(a)

    def inplace(self, a):
        """ρ(a), overwriting a (a must not require grad)."""
        return self.inplace_fn(a)

    def numpy(self, a: np.ndarray) -> np.ndarray:
        return self.numpy_fn(a)

    def slope(self, a):
        """ρ'(a) elementwise, by autograd of the torch form (exact for every registered ρ)."""
        import torch

        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(self.torch_fn(a).sum(), a)
        return d


ACTIVATIONS: Registry[Activation] = Registry("activation")


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    """Overflow-free logistic with one exp (the kernel form below computes the same expression)."""
    a = np.asarray(a, dtype=np.float64)
    e = np.exp(-np.abs(a))
    return np.where(a >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


# ------------------------------------------------------------------ scalar forms of the analog kernels
def _tanh_kernel(a):
    return np.tanh(a)


def _hard_sigmoid_kernel(a):
    return min(max(a, 0.0), 1.0)


def _hard_sigmoid_half_kernel(a):
    return min(max(0.5 * a, 0.0), 1.0)


def _sigmoid4_kernel(a):
    z = 4.0 * a - 2.0  # the logistic of 4a − 2 with one exp, overflow-free (_np_sigmoid)
    if z >= 0.0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


def _identity_kernel(a):
    return a


def _elu_kernel(a):
    return a if a > 0.0 else np.expm1(a)


# ------------------------------------------------------------------------------------- torch forms
def _tanh_torch(torch) -> TorchForms:
    return TorchForms(torch.tanh, torch.tanh_, torch.tanh_)


def _clip01_(a):
    """clamp(a, 0, 1) in place, as two one-sided clamps (the same numbers; torch.func.vmap cannot batch
    clamp_, and a population of nets runs its steps under vmap)."""
    return a.clamp_min_(0.0).clamp_max_(1.0)


def _hard_sigmoid_torch(torch) -> TorchForms:
    return TorchForms(lambda a: a.clamp(0.0, 1.0), _clip01_, _clip01_)


def _hard_sigmoid_half_torch(torch) -> TorchForms:
    return TorchForms(lambda a: (0.5 * a).clamp(0.0, 1.0), lambda a: _clip01_(a.mul_(0.5)), _clip01_)


def _sigmoid4_torch(torch) -> TorchForms:
    return TorchForms(lambda a: torch.sigmoid(4.0 * a - 2.0), lambda a: a.mul_(4.0).sub_(2.0).sigmoid_(), torch.sigmoid_)


def _identity_torch(torch) -> TorchForms:
    return TorchForms(lambda a: a, lambda a: a, None)


def _elu_torch(torch) -> TorchForms:
    elu, elu_ = torch.nn.functional.elu, torch.nn.functional.elu_
    return TorchForms(elu, elu_, elu_)


for _act in (
    Activation("tanh", "tanh(a)", np.tanh, _tanh_torch, _tanh_kernel, "tanh({u})", (-1.0, 1.0)),
    Activation(
        "hard_sigmoid", "clamp(a, 0, 1)", lambda a: np.clip(a, 0.0, 1.0), _hard_sigmoid_torch, _hard_sigmoid_kernel,
        "clip({u}, 0, 1)", (0.0, 1.0),
    ),
    Activation(
        "hard_sigmoid_half", "clamp(a/2, 0, 1)", lambda a: np.clip(0.5 * a, 0.0, 1.0), _hard_sigmoid_half_torch,
        _hard_sigmoid_half_kernel, "clip(0.5*({u}), 0, 1)", (0.0, 1.0), scale=0.5,
    ),
    Activation(
        "sigmoid4", "1 / (1 + exp(-4 (a - 1/2)))", lambda a: _np_sigmoid(4.0 * a - 2.0), _sigmoid4_torch,
        _sigmoid4_kernel, "1/(1 + exp(-4*(({u}) - 0.5)))", (0.0, 1.0), scale=4.0, shift=-2.0,
    ),
    Activation("identity", "a", lambda a: a, _identity_torch, _identity_kernel, "({u})"),
    Activation(
        "elu", "a if a > 0 else exp(a) − 1",
        lambda a: np.where(a > 0.0, a, np.expm1(np.minimum(a, 0.0))),  # no overflow for large a
        _elu_torch, _elu_kernel,
        "clip({u}, 0, inf) + (exp(clip({u}, -inf, 0)) - 1)",  # exp of a clipped u: no overflow for large u
        (-1.0, math.inf),
    ),
):
    ACTIVATIONS.register(_act.name, _act)


def get_activation(name: str, key: str = "net.activation") -> Activation:
    return ACTIVATIONS.get(name, key)


FORM_OWNERS = {"kernel": "the analog substrate's numba kernels", "brian2": "the Brian2 substrate"}


def with_form(which: str) -> list[str]:
    """The registered activations that have a `which` form ("kernel" | "brian2"), in registry order."""
    return [name for name in ACTIVATIONS if getattr(ACTIVATIONS.get(name), which) is not None]


def form(name: str, which: str, key: str = "activation") -> Any:
    """The `which` form ("kernel" | "brian2") of activation `name`; ConfigError naming `key` when the
    activation is unknown or has no such form, with the activations that have one."""
    act = ACTIVATIONS.get(name, key)
    value = getattr(act, which)
    if value is None:
        raise ConfigError(
            f"{key} = '{name}': this activation has no {which} form, so {FORM_OWNERS[which]} cannot run it; "
            f"activations with one: {', '.join(with_form(which))} (the `{which}` field of a registry entry, "
            "neurohw/core/activations.py)"
        )
    return value

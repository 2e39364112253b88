from __future__ import annotations

import numpy as np
import pytest
import torch

from neurohw.core.activations import ACTIVATIONS, Activation
from neurohw.core.registry import Registry
from neurohw.errors import ConfigError

REFERENCE = {  # the formulas of the issue, written independently
    "tanh": np.tanh,
    "hard_sigmoid": lambda a: np.minimum(np.maximum(a, 0.0), 1.0),
    "hard_sigmoid_half": lambda a: np.minimum(np.maximum(a / 2.0, 0.0), 1.0),
    "sigmoid4": lambda a: 1.0 / (1.0 + np.exp(-4.0 * (a - 0.5))),
    "identity": lambda a: a,
    "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0.0))),
}


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_form_of_an_activation_agrees(name):
    act = ACTIVATIONS.get(name)
    a = np.linspace(-4.0, 4.0, 801)
    t = torch.from_numpy(a)
    want = REFERENCE[name](a)
    np.testing.assert_allclose(act(t).numpy(), want, atol=1e-15)
    np.testing.assert_allclose(act.inplace(t.clone()).numpy(), want, atol=1e-15)
    np.testing.assert_allclose(act.numpy(a), want, atol=1e-15)
    base = act.base_inplace or (lambda v: v)
    np.testing.assert_allclose(base(t * act.scale + act.shift).numpy(), want, atol=1e-15)  # ρ(a) = g(κa + c)


def test_registry_refuses_duplicates_and_names_valid_choices():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match=r"unknown thing 'b'.*valid: a"):
        reg.get("b")
    with pytest.raises(ValueError):
        ACTIVATIONS.register("tanh", Activation("tanh", torch.tanh, torch.tanh_, np.tanh, "tanh"))


SLOPES = {  # ρ'(a) in closed form, away from the kinks of the clamps (a = 0, 1, 2)
    "tanh": lambda a: 1.0 - np.tanh(a) ** 2,
    "sigmoid4": lambda a: 4.0 * REFERENCE["sigmoid4"](a) * (1.0 - REFERENCE["sigmoid4"](a)),
    "hard_sigmoid": lambda a: ((a > 0.0) & (a < 1.0)).astype(float),
    "hard_sigmoid_half": lambda a: 0.5 * ((a > 0.0) & (a < 2.0)).astype(float),
    "identity": lambda a: np.ones_like(a),
    "elu": lambda a: np.where(a > 0.0, 1.0, np.exp(np.minimum(a, 0.0))),
}


@pytest.mark.parametrize("name", sorted(SLOPES))
def test_slope_is_the_closed_form_derivative(name):
    a = np.linspace(-4.0, 4.0, 800)  # even count: no point on a kink
    got = ACTIVATIONS.get(name).slope(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, SLOPES[name](a), atol=1e-14)

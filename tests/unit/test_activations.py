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
        ACTIVATIONS.register("tanh", Activation("tanh", "tanh(a)", np.tanh, ACTIVATIONS.get("tanh").torch_forms))


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


# ------------------------------------------------------------------ every substrate has every activation
@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_activation_has_a_kernel_and_a_brian2_form_that_agree(name):
    """A registered activation must run on every substrate: its scalar kernel form, compiled by numba
    through the kernels' table (core/jit.py) at its index, and its Brian2 expression, evaluated by
    brian2, equal its numpy form. Registering an activation without these forms fails here."""
    brian2 = pytest.importorskip("brian2")
    from neurohw.core.activations import with_form
    from neurohw.substrates.analog import kernels
    from neurohw.substrates.analog.model import ACTIVATION_IDS
    from neurohw.substrates.brian2.network import codegen

    act = ACTIVATIONS.get(name)
    assert act.kernel is not None, f"activation '{name}' has no kernel form (the analog substrate cannot run it)"
    assert act.brian2 is not None, f"activation '{name}' has no brian2 form (the Brian2 substrate cannot run it)"
    assert name in ACTIVATION_IDS and name in with_form("kernel") and name in with_form("brian2")
    a = np.concatenate([np.linspace(-6.0, 6.0, 1201), [-40.0, 40.0]])
    far = np.concatenate([a, [-800.0, 800.0]])  # the kernel forms do not overflow (the states of a net stay O(1))
    want = act.numpy(a)

    from numba import njit

    @njit
    def through_table(i, a):
        out = np.empty_like(a)
        for j in range(a.shape[0]):
            out[j] = kernels._rho(i, a[j])
        return out

    np.testing.assert_allclose(through_table(ACTIVATION_IDS[name], far), act.numpy(far), rtol=1e-15, atol=1e-15)
    with codegen("numpy"):
        g = brian2.NeuronGroup(len(a), "u : 1\nr = " + act.brian2.format(u="u") + " : 1", namespace={})
        g.u = a
        brian2.Network(g).run(0 * brian2.ms)  # brian2 warns when a group that never ran is deleted
        got = np.asarray(g.r[:])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    lo, hi = act.image
    assert np.all((want >= lo) & (want <= hi))  # the image the LIF model's rate coding relies on


def test_an_activation_without_a_substrate_form_is_refused_by_name(monkeypatch):
    """An activation registered without kernel and Brian2 forms: the analog and Brian2 substrates refuse
    it with an error that names it and the activations they can run (derived from the registry)."""
    pytest.importorskip("brian2")
    from neurohw.spec import LayerSpec, NetworkSpec
    from neurohw.substrates.analog.model import crossbars_from_spec
    from neurohw.substrates.brian2.network import DenseNet

    softsign = Activation("softsign", "a / (1 + |a|)", lambda a: a / (1.0 + np.abs(a)), lambda torch: None)
    monkeypatch.setitem(ACTIVATIONS._items, "softsign", softsign)
    g = np.random.default_rng(0)
    layers = (LayerSpec("dense", (4,), (3,), g.standard_normal((3, 4)).astype(np.float32), np.zeros(3, np.float32)),
              LayerSpec("dense", (3,), (2,), g.standard_normal((2, 3)).astype(np.float32), np.zeros(2, np.float32)))
    spec = NetworkSpec("fc", "softsign", "mse", 5, 2, 0.1, (4,), (1, 2, 2), (0.0,), (1.0,), layers)
    with pytest.raises(ConfigError, match=r"'softsign': this activation has no kernel form.*analog.*with one: tanh, hard_sigmoid"):
        crossbars_from_spec(spec)
    with pytest.raises(ConfigError, match=r"'softsign': this activation has no brian2 form.*Brian2.*with one: tanh, hard_sigmoid"):
        DenseNet.from_spec(spec)

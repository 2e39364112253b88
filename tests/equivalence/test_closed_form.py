"""The closed-form ∂Φ^β/∂s and ∂Φ^β/∂θ equal autograd of Φ^β, in float64, for every architecture.

Tolerance 1e-10: both sides evaluate the same sums of O(100) float64 products of O(1) numbers, so
they differ by rounding only (~1e-15); 1e-10 leaves room for cancellation and still catches any
missing term, wrong transpose or mis-routed pooling index (errors of order 1e-1).
"""

from __future__ import annotations

import pytest
import torch

from neurohw.config import NetConfig
from neurohw.core.activations import ACTIVATIONS
from neurohw.dynamics import relax, step_autograd
from neurohw.nets.build import build_net
from tests.conftest import max_abs_diff

TOL = 1e-10

ARCHITECTURES = {
    "fc1_mse": (NetConfig(hidden=(9,)), (1, 4, 4)),
    "fc3_mse": (NetConfig(hidden=(9, 7, 6)), (1, 4, 4)),
    "fc2_ce": (NetConfig(hidden=(9, 7), cost="ce_readout"), (1, 4, 4)),
    "conv_max_mse": (NetConfig(architecture="conv", channels=(3, 4), kernel_sizes=(3, 3), paddings=(1, 0), pools=("max2", "max2"), hidden=()), (2, 9, 9)),
    "conv_avg_dense_ce": (NetConfig(architecture="conv", channels=(3, 4), kernel_sizes=(3, 2), pools=("avg2", "none"), hidden=(6,), cost="ce_readout"), (2, 9, 9)),
    "conv_none_stride2": (NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), strides=(2,), paddings=(1,), pools=("none",), hidden=(5,)), (2, 8, 8)),
    "conv_max_odd_ce": (NetConfig(architecture="conv", channels=(4, 3), kernel_sizes=(2, 2), pools=("max2", "max2"), hidden=(), cost="ce_readout"), (1, 11, 11)),
}


def make(arch: str, activation: str, seed: int = 0, nudge: str = "inside"):
    cfg, shape = ARCHITECTURES[arch]
    cfg = NetConfig(**{**cfg.__dict__, "activation": activation, "nudge": nudge})
    g = torch.Generator().manual_seed(seed)
    net = build_net(cfg, shape, 5, generator=g).double()
    x = torch.rand(3, *net.input_shape, generator=g, dtype=torch.float64)
    state = [torch.rand(3, *s, generator=g, dtype=torch.float64) for s in net.state_shapes]
    y = torch.nn.functional.one_hot(torch.tensor([0, 3, 4]), 5).double()
    return net, x, state, y


@pytest.mark.parametrize("nudge", ["inside", "outside"])
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_step_equals_autograd(arch, activation, beta, nudge):
    net, x, state, y = make(arch, activation, nudge=nudge)
    reference = step_autograd(net, x, state, y, beta)
    with torch.no_grad():
        x_drive = net.input_drive(x)
        closed = net.step(x_drive, state, y, beta)
        fast = net.phase(x_drive, y, beta).step(state)  # folded for dense nets
    assert max_abs_diff(closed, reference) < TOL
    assert max_abs_diff(fast, reference) < TOL
    with torch.enable_grad():  # the differentiable path (BPTT) computes the same step
        assert max_abs_diff(net.step(x_drive, state, y, beta), reference) < TOL


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("beta", [0.0, -0.3, 0.7])
def test_param_grads_equal_autograd(arch, beta):
    net, x, state, y = make(arch, "tanh")
    params = net.param_list()
    reference = torch.autograd.grad(net.phi(x, state, y, beta), params, allow_unused=True)
    reference = [torch.zeros_like(p) if r is None else r for p, r in zip(params, reference)]  # readout at β = 0
    with torch.no_grad():
        closed = net.phi_param_grads(x, state, y, beta)
    assert [t.shape for t in closed] == [t.shape for t in reference]
    assert max_abs_diff(closed, reference) < TOL


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_contrast_equals_difference(arch):
    net, x, state_a, y = make(arch, "sigmoid4", seed=1)
    _, _, state_b, _ = make(arch, "sigmoid4", seed=2)
    with torch.no_grad():
        diff = net.phi_param_grads_diff(x, state_a, state_b, y, 0.4, -0.2)
        two = [a - b for a, b in zip(net.phi_param_grads(x, state_a, y, 0.4), net.phi_param_grads(x, state_b, y, -0.2))]
    assert max_abs_diff(diff, two) < TOL


def test_pooling_routes_feedback_through_indices():
    """A max-pooled layer's feedback reaches only the arg-max positions of the convolution output."""
    net, x, state, y = make("conv_max_mse", "identity")
    layer = net.layers[1]
    with torch.no_grad():
        _, idx = layer.drive(state[0])
        g = layer.unpool(state[1], idx)
    nonzero = (g != 0).flatten(2).sum(-1)
    assert int(nonzero.max()) <= state[1][0, 0].numel()  # at most one position per pooled unit


def test_outside_nudge_is_added_after_the_activation():
    net, x, state, y = make("fc1_mse", "sigmoid4", nudge="outside")
    with torch.no_grad():
        xd = net.input_drive(x)
        free, nudged = net.step(xd, state), net.step(xd, state, y, 0.7)
    assert torch.allclose(nudged[-1], free[-1] - 0.7 * (state[-1] - y), atol=TOL)
    assert torch.allclose(nudged[0], free[0], atol=0)


@pytest.mark.parametrize("nudge", ["inside", "outside"])
def test_untied_fast_path_equals_step(nudge):
    """C-VF nets (untied feedback) take the fast dense path too; it must equal the generic step."""
    from neurohw.learning.cep import set_initial_angle

    cfg = NetConfig(hidden=(9, 7), nudge=nudge)
    g = torch.Generator().manual_seed(0)
    net = build_net(cfg, (1, 4, 4), 5, untied=True, generator=g).double()
    set_initial_angle(net, 60.0, g)
    x = torch.rand(3, 16, dtype=torch.float64, generator=g)
    state = [torch.rand(3, *s, dtype=torch.float64, generator=g) for s in net.state_shapes]
    y = torch.eye(5, dtype=torch.float64)[:3]
    with torch.no_grad():
        xd = net.input_drive(x)
        assert max_abs_diff(net.phase(xd, y, 0.5, fold=True).step(state), net.step(xd, state, y, 0.5)) < TOL
        # and the feedback really uses weight_backward: s_1 sees W^b_1, not W_1
        a = net.layers[1].weight_backward.T @ state[1][0] + xd[0]
        assert torch.allclose(net.step(xd, state)[0][0], net.activation(a), atol=TOL)


@pytest.mark.parametrize("hidden", [(), (6,), (6, 5), (6, 5, 4, 3)])
@pytest.mark.parametrize("untied", [False, True])
def test_free_phase_as_two_chains_equals_step_by_step(hidden, untied):
    """relax() runs dense free phases as two interleaved chains; same numbers as T single steps."""
    from neurohw.learning.cep import set_initial_angle

    g = torch.Generator().manual_seed(1)
    net = build_net(NetConfig(hidden=hidden, activation="sigmoid4"), (1, 3, 3), 4, untied=untied, generator=g).double()
    if untied:
        set_initial_angle(net, 50.0, g)
    x = torch.rand(3, 9, generator=g, dtype=torch.float64)
    start = [torch.rand(3, *s, generator=g, dtype=torch.float64) for s in net.state_shapes]
    with torch.no_grad():
        xd = net.input_drive(x)
        for steps in (1, 2, 3, 8, 31):
            s = start
            for _ in range(steps):
                s = net.step(xd, s)
            assert max_abs_diff(net.phase(xd, fold=True).free_checkerboard(start, steps), s) < TOL
            assert max_abs_diff(relax(net, xd, start, steps), s) < TOL

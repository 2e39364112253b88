from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from neurohw.config import NetConfig, load_config
from neurohw.dynamics import loop_gain, relax, settling
from neurohw.errors import ConfigError, DivergenceError
from neurohw.gdu import bptt_gradients
from neurohw.learning import BP, BPTT, CEP, CVF, EP, build_learner, set_initial_angle, weight_angles_deg
from neurohw.learning.base import BetaSampler
from neurohw.learning.cep import vf_updates
from neurohw.nets.build import build_net
from neurohw.nets.layered import build_fc
from tests.conftest import max_abs_diff

MODELS = Path(__file__).resolve().parents[2] / "models"


def small_net(activation="identity", hidden=(8, 6), gain=0.5, cost="mse", seed=0):
    g = torch.Generator().manual_seed(seed)
    net = build_net(NetConfig(hidden=hidden, activation=activation, cost=cost, init_gains=(gain,)), (1, 3, 3), 4, generator=g)
    net = net.double()
    x = torch.rand(5, 9, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(5) % 4, 4).double()
    return net, x, y


def test_relax_equals_repeated_steps():
    net, x, y = small_net("sigmoid4")
    with torch.no_grad():
        xd = net.input_drive(x)
        s = net.init_state(x)
        manual = s
        for _ in range(12):
            manual = net.step(xd, manual, y, 0.3)
        assert max_abs_diff(relax(net, xd, s, 12, y, 0.3), manual) < 1e-12


def test_divergence_names_layer_and_step():
    net = build_fc([4, 6, 3], "identity", generator=torch.Generator().manual_seed(0), gains=[80.0])
    x = torch.ones(2, 4)
    with torch.no_grad(), pytest.raises(DivergenceError) as e:
        relax(net, net.input_drive(x), net.init_state(x), 400, phase="free")
    msg = str(e.value)
    assert "free phase" in msg and "at step" in msg and "layer" in msg
    step = int(msg.split("at step ")[1].split()[0])
    with torch.no_grad():  # the step named is the first one with a non-finite value
        s = relax(net, net.input_drive(x), net.init_state(x), step - 1, check=False)
        assert all(bool(torch.isfinite(t).all()) for t in s)
    with torch.no_grad(), pytest.raises(DivergenceError, match="layer 1"):
        bad = torch.full((2, 4), math.nan)
        relax(net, net.input_drive(bad), net.init_state(bad), 3)


def test_bp_gradient_of_a_linear_layer_in_closed_form():
    net = build_fc([6, 3], "identity", generator=torch.Generator().manual_seed(0)).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    y = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    BP().step(net, x, y, lambda: None)
    err = x @ net.layers[0].weight.T + net.layers[0].bias - y  # ∂(mean ½‖s − y‖²)/∂s
    assert torch.allclose(net.layers[0].weight.grad, err.T @ x / 4, atol=1e-14)
    assert torch.allclose(net.layers[0].bias.grad, err.mean(0), atol=1e-14)


def test_bptt_learner_equals_the_sum_of_per_step_gradients():
    """Two independent BPTT implementations: plain autograd through the loop (the learner) and one
    parameter copy per step (the GDU check); the total gradient is the sum over steps."""
    net, x, y = small_net("tanh", gain=0.8)
    T = 15
    BPTT(T).step(net, x, y, lambda: None)
    _, per_step = bptt_gradients(net, x, y, T, T)
    total = [-sum(step[i] for step in per_step) / x.shape[0] for i in range(len(net.param_list()))]
    assert max_abs_diff([p.grad for p in net.param_list()], total) < 1e-12
    BPTT(T, T_backprop=4).step(net, x, y, lambda: None)
    _, last4 = bptt_gradients(net, x, y, T, 4)
    total4 = [-sum(step[i] for step in last4) / x.shape[0] for i in range(len(net.param_list()))]
    assert max_abs_diff([p.grad for p in net.param_list()], total4) < 1e-12


def test_ep_gradient_approximates_truncated_bptt():
    """The training-time form of the GDU property: EP's .grad ≈ BPTT's through the last T_nudge steps."""
    net, x, y = small_net("identity")
    EP(1e-4, 200, 8).step(net, x, y, lambda: None)
    ep = [p.grad.clone() for p in net.param_list()]
    BPTT(200, T_backprop=8).step(net, x, y, lambda: None)
    bptt = [p.grad for p in net.param_list()]
    scale = max(float(g.abs().max()) for g in bptt)
    assert max_abs_diff(ep, bptt) / scale < 1e-3


def test_vf_update_is_post_change_times_pre_activity():
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(3,), activation="tanh"), (1, 2, 2), 2, untied=True, generator=g).double()
    x = torch.rand(2, 4, generator=g, dtype=torch.float64)
    s = [torch.rand(2, 3, generator=g, dtype=torch.float64), torch.rand(2, 2, generator=g, dtype=torch.float64)]
    s_next = [torch.rand(2, 3, generator=g, dtype=torch.float64), torch.rand(2, 2, generator=g, dtype=torch.float64)]
    W0, b0, W1, b1, Wb1 = vf_updates(net, x, s, s_next)
    for i in range(3):
        for j in range(4):  # synapse x_j → s_1,i
            assert math.isclose(W0[i, j], sum((s_next[0][b, i] - s[0][b, i]) * x[b, j] for b in range(2)), abs_tol=1e-14)
    for i in range(2):
        for j in range(3):  # forward synapse s_1,j → s_2,i and feedback synapse s_2,i → s_1,j
            assert math.isclose(W1[i, j], sum((s_next[1][b, i] - s[1][b, i]) * s[0][b, j] for b in range(2)), abs_tol=1e-14)
            assert math.isclose(Wb1[i, j], sum((s_next[0][b, j] - s[0][b, j]) * s[1][b, i] for b in range(2)), abs_tol=1e-14)
    assert torch.allclose(b1, (s_next[1] - s[1]).sum(0))
    # r_b (learner.feedback_lr_ratio) scales the feedback update alone
    *forward, Wb1_k = vf_updates(net, x, s, s_next, feedback_ratio=0.3)
    assert all(torch.equal(a, b) for a, b in zip(forward, (W0, b0, W1, b1)))
    assert torch.allclose(Wb1_k, 0.3 * Wb1, rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("estimator", ["random-sign", "symmetric"])
def test_feedback_ratio_is_the_feedback_learning_rate(estimator):
    """With SGD (momentum, no weight decay), r_b = learner.feedback_lr_ratio is exactly a learning rate r_b·η for
    W^b: three batches of C-VF with r_b = 0.25 equal three batches with r_b = 1 and W^b in its own parameter
    group at lr r_b·η (float64; measured ≈ 1e-17). Planted: r_b applied to the forward weights, or not passed
    to the rule (W^b then learns at η) — each fails. r_b = 0 leaves W^b as it was."""
    g = torch.Generator().manual_seed(4)
    net = build_net(NetConfig(hidden=(9,), activation="sigmoid4", nudge="outside"), (1, 3, 3), 4, untied=True,
                    generator=g).double()
    set_initial_angle(net, 20.0, g)
    x = torch.rand(6, 9, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).double()
    kappa, lr = 0.25, 0.3

    def run(ratio, split):
        n = copy.deepcopy(net)
        fb = [l.weight_backward for l in n.layers if l.weight_backward is not None]
        rest = [p for p in n.parameters() if all(p is not q for q in fb)]
        groups = [{"params": rest}, {"params": fb, "lr": lr * kappa}] if split else [{"params": list(n.parameters())}]
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        learner = CVF(0.4, 12, 4, estimator, seed=7, feedback_ratio=ratio)
        for _ in range(3):
            learner.step(n, x, y, opt.step)
        return n.requires_grad_(False)

    ours, ref = run(kappa, False), run(1.0, True)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours.param_list(), ref.param_list()))
    assert diff < 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(ref.param_list(), run(1.0, False).param_list())) > 1e-4
    frozen = run(0.0, False)
    assert torch.equal(frozen.layers[1].weight_backward, net.layers[1].weight_backward)
    assert not torch.equal(frozen.layers[1].weight, net.layers[1].weight)
    with pytest.raises(ConfigError, match="feedback_lr_ratio"):
        CVF(0.4, 12, 4, feedback_ratio=-0.5)
    cfg = load_config(MODELS / "mnist_cvf_fc1.toml", ["learner.feedback_lr_ratio=0.4"])
    assert build_learner(cfg.learner).feedback_ratio == 0.4  # the card's key reaches the rule
    with pytest.raises(ConfigError, match="learner.feedback_lr_ratio must be a finite number ≥ 0, got -1"):
        load_config(MODELS / "mnist_cvf_fc1.toml", ["learner.feedback_lr_ratio=-1"])


@pytest.mark.parametrize("activation,nudge", [("sigmoid4", "outside"), ("tanh", "inside"), ("identity", "outside")])
def test_vf_vector_field_rule_is_the_vjp_of_the_step(activation, nudge):
    """eq. C-VF-vf: the gated updates equal (∂F/∂θ(x, s_t, θ))ᵀ (s_{t+1} − s_t) by autograd, in float64.

    The nudge −β(s_N − y) does not depend on θ, so ∂F^β/∂θ is the VJP of the nudged step itself. With
    the identity ρ' = 1 and the ungated rule (eq. C-VF) is the same VJP: the two rules differ by the gate.
    """
    g = torch.Generator().manual_seed(3)
    cfg = NetConfig(hidden=(7, 5), activation=activation, nudge=nudge)
    net = build_net(cfg, (1, 3, 3), 4, untied=True, generator=g).double()
    set_initial_angle(net, 50.0, g)
    x = torch.rand(6, 9, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).double()
    s = [torch.rand(6, n, generator=g, dtype=torch.float64) for n in (7, 5, 4)]
    beta = 0.3
    with torch.no_grad():
        s_next = net.step(net.input_drive(x), s, y, beta)
        learner = CVF(beta, 1, 1, rule="vector-field")
        ours = learner.updates(net, x, net.input_drive(x), y, s, s_next, beta, 0)
        plain = vf_updates(net, x, s, s_next)
    params = net.param_list()
    out = net.step(net.input_drive(x), s, y, beta)
    ref = torch.autograd.grad(out, params, grad_outputs=[b - a for a, b in zip(s, s_next)])
    scale = max(float(r.abs().max()) for r in ref)
    assert max_abs_diff(ours, list(ref)) / scale < 1e-12
    if activation == "identity":
        assert max_abs_diff(plain, list(ref)) / scale < 1e-12
    else:  # the gate matters: a rule without it is a different update
        assert max_abs_diff(plain, list(ref)) / scale > 1e-2
    with pytest.raises(ConfigError, match="vf_rule"):
        CVF(beta, 1, 1, rule="hebbian")


def test_loop_gain_is_the_spectral_radius_of_the_two_step_jacobian():
    """eq. settle: for a 784-less net with states (h1, h2, o) the two-step Jacobian restricted to h2 is
    D2 W1 D1 W^b_1ᵀ + D2 W^b_2ᵀ D3 W2 (D_n = diag ρ'(a_n) at the state), written out here by hand; the loop
    gain is the largest |eigenvalue|, per input, at a random (unsettled) state, to 1e-12 in float64.
    Planted: the radius of J instead of J² (its square root) fails."""
    g = torch.Generator().manual_seed(5)
    net = build_net(NetConfig(hidden=(7, 5), activation="sigmoid4"), (1, 3, 3), 4, untied=True, generator=g).double()
    set_initial_angle(net, 70.0, g)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    x = torch.rand(6, 9, generator=g, dtype=torch.float64)
    s = [torch.rand(6, n, generator=g, dtype=torch.float64) for n in (7, 5, 4)]
    drive = net.input_drive(x)
    ours = loop_gain(net, drive, s)
    (W0, W1, W2), (Wb1, Wb2) = [l.weight for l in net.layers], [net.layers[1].weight_backward, net.layers[2].weight_backward]
    a1, a2, a3 = net.pre_activations(drive, s)
    ref = []
    for b in range(6):
        D1, D2, D3 = (torch.diag(net.activation.slope(a[b])) for a in (a1, a2, a3))
        M = D2 @ W1 @ D1 @ Wb1.t() + D2 @ Wb2.t() @ D3 @ W2
        ref.append(torch.linalg.eigvals(M.detach()).abs().max())
    ref = torch.stack(ref)
    assert float(ref.min()) > 0.05 and float((ours - ref).abs().max()) < 1e-12 * float(ref.max())


def test_settling_of_a_repelling_linear_loop():
    """A linear net (ρ = identity) whose loop W^b_1 W_1ᵀ has spectral radius 1.2: the loop gain is 1.2 for
    every input, the states grow instead of settling, and `settling` says both; scaled to 0.5, it settles."""
    for target, settles in ((1.2, False), (0.5, True)):
        g = torch.Generator().manual_seed(2)
        net = build_net(NetConfig(hidden=(6,), activation="identity"), (1, 3, 3), 4, untied=True, generator=g).double()
        set_initial_angle(net, 40.0, g)
        layer = net.layers[1]
        with torch.no_grad():
            rho = torch.linalg.eigvals(layer.weight_backward @ layer.weight.t()).abs().max()
            layer.weight.mul_((target / rho).sqrt())
            layer.weight_backward.mul_((target / rho).sqrt())
        x = torch.rand(8, 9, generator=g, dtype=torch.float64)
        out = settling(net, x, 60)
        assert abs(out["loop_gain_max"] - target) < 1e-12 and abs(out["loop_gain_median"] - target) < 1e-12
        assert out["loop_gain_over_1"] == (0.0 if settles else 1.0)
        assert out["free_unsettled"] == (0.0 if settles else 1.0)


@pytest.mark.parametrize("psi", [0.0, 45.0, 90.0, 135.0])
def test_initial_feedback_angle(psi):
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(300,)), (1, 10, 10), 200, untied=True, generator=g)
    set_initial_angle(net, psi, g)
    (angle,) = weight_angles_deg(net)
    assert abs(angle - psi) < 2.0  # 60,000 sign flips: the angle's spread is ≈ 0.2°
    with pytest.raises(ConfigError, match="psi_deg"):
        set_initial_angle(net, 200.0, g)


def test_cvf_learns_with_untied_weights_and_keeps_them_apart():
    g = torch.Generator().manual_seed(1)
    net = build_net(NetConfig(hidden=(10,), activation="sigmoid4"), (1, 3, 3), 4, untied=True, generator=g).double()
    x = torch.rand(5, 9, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(5) % 4, 4).double()
    set_initial_angle(net, 30.0, g)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    learner = CVF(0.5, 20, 5)
    losses = [float(learner.step(net, x, y, opt.step)["loss"]) for _ in range(100)]
    assert losses[-1] < 0.75 * losses[0]  # measured 0.44 → 0.29; a sign error makes it grow
    assert weight_angles_deg(net)[0] > 1.0  # the feedback weights are not tied to the forward ones


def test_cep_refuses_untied_and_estimators_are_checked():
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(4,)), (1, 2, 2), 2, untied=True, generator=g)
    with pytest.raises(ConfigError, match="tied"):
        CEP(0.1, 3, 2).step(net, torch.rand(1, 4), torch.eye(2)[:1], lambda: None)
    with pytest.raises(ConfigError, match="learner.estimator 'two-sided' is not available"):
        CEP(0.1, 3, 2, "two-sided")
    assert CEP(0.1, 3, 2, "symmetric").n_updates == 4 and CEP(0.1, 3, 2, "random-sign").n_updates == 2
    with pytest.raises(ConfigError, match="cost"):
        build_net(NetConfig(hidden=(4,), cost="ce_readout"), (1, 2, 2), 2, untied=True)
    with pytest.raises(ConfigError, match="fc"):
        build_net(NetConfig(architecture="conv", channels=(2,), kernel_sizes=(2,)), (1, 6, 6), 2, untied=True)


def test_random_sign_is_seeded_and_resumable():
    a = BetaSampler(0.5, "random-sign", seed=7)
    draws = [a.draw() for _ in range(40)]
    assert {d[1] for d in draws} == {0.5, -0.5} and all(d[0] == 0.0 for d in draws)
    state = a.state_dict()
    nxt = [a.draw() for _ in range(5)]
    b = BetaSampler(0.5, "random-sign", seed=7)
    assert [b.draw() for _ in range(40)] == draws
    b.load_state_dict(state)
    assert [b.draw() for _ in range(5)] == nxt
    assert BetaSampler(0.5, "symmetric", 0).draw() == (-0.5, 0.5)


def test_wrong_batch_shapes_are_named():
    net, x, y = small_net()
    with pytest.raises(ConfigError, match=r"input batch of shape \(5, 8\).*\(batch, 9\)"):
        EP(0.1, 3, 2).step(net, x[:, :8], y, lambda: None)
    with pytest.raises(ConfigError, match="target batch"):
        BPTT(3).step(net, x, y[:, :3], lambda: None)
    with pytest.raises(ConfigError, match="input batch"):
        EP(0.1, 3, 2).predict(net, x[:, :8])

"""The learners' own updates, sign and scale: EP (every estimator, every drawn sign) against truncated
BPTT, and C-EP step by step against a float64 reference, in float64 on small nets.

These tests exercise `EP.step`, `EP.estimate` and `CEP.step` (what training runs), not `neurohw.gdu`,
and each is chosen so that a planted mistake of sign or scale lands far outside its tolerance:

* EP vs BPTT truncated to the nudged length (Ernoult et al. 2019, Theorem 1): with the identity ρ the
  step is the gradient map of Φ and, on a contracting net (init gain 0.5) whose free phase has
  converged (its residual is exactly 0 here), EP's `.grad` = −Δθ/B tends to BPTT's ∂(mean ℓ)/∂θ through
  the last T_nudge steps with an error O(β) for one-sided and random-sign nudging and O(β²) for the
  symmetric estimator. Measured (max-abs error / max |BPTT gradient|, T_nudge 6): one-sided and
  random-sign ≈ 1.09·β (MSE) and 0.51·β (CE readout), symmetric ≈ 1.13·β² (MSE) and 0.025·β² (CE);
  the ratios for β = 1e-2 → 1e-3 are 9.91–10.09 and 100.0. A lost sign, a missing 1/β or a wrong state
  in the contrast gives an error of order 1 or worse.
* C-EP at a finite learning rate against a reference written here from eq. C-EP, which recomputes the
  dynamics and ∂Φ/∂θ by autograd of `net.phi` at the current θ_t after every update. Both are exact
  computations of the same float64 numbers, so they agree to round-off (2e-15…2e-14 relative to the
  update, measured); a stale input drive or a lost sign changes the update at order η or order 1.
"""

from __future__ import annotations

import copy

import pytest
import torch

from neurohw.config import NetConfig
from neurohw.dynamics import relax
from neurohw.learning import BPTT, CEP, EP
from neurohw.learning.base import BetaSampler
from neurohw.nets.build import build_net

# seeds of the random-sign sampler whose first draw is +β and −β (checked in `_seed_for`)
SIGN_SEEDS = {+1: 0, -1: 1}


def _seed_for(sign: int, beta: float, estimator: str = "random-sign") -> int:
    seed = SIGN_SEEDS[sign]
    assert BetaSampler(beta, estimator, seed).draw() == (0.0, sign * beta), "the seed no longer draws this sign"
    return seed


def _net(activation: str, cost: str, *, nudge: str = "inside", gain: float = 0.5, hidden=(8, 6), seed: int = 0):
    """A 9-8-6-4 net (a readout 6 → 4 for the CE cost) in float64, with a batch of 5 one-hot targets."""
    g = torch.Generator().manual_seed(seed)
    cfg = NetConfig(hidden=hidden, activation=activation, cost=cost, nudge=nudge, init_gains=(gain,))
    net = build_net(cfg, (1, 3, 3), 4, generator=g).double()
    x = torch.rand(5, 9, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(5) % 4, 4).double()
    return net, x, y


def _grads(learner, net, x, y) -> list[torch.Tensor]:
    """The `.grad` a learner's `step` writes (the parameters are not changed: `apply` does nothing)."""
    for p in net.param_list():
        p.grad = None
    learner.step(net, x, y, lambda: None)
    return [p.grad.clone() for p in net.param_list()]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a − b| over every parameter, relative to max |b|."""
    return max(float((u - v).abs().max()) for u, v in zip(a, b)) / max(float(v.abs().max()) for v in b)


# ---------------------------------------------------------------------------------- EP vs BPTT
T_FREE, T_NUDGE = 200, 6
EP_CASES = [  # (estimator, drawn sign, order of the error in β)
    ("one-sided", +1, 1),
    ("random-sign", +1, 1),
    ("random-sign", -1, 1),
    ("symmetric", +1, 2),
]


@pytest.mark.parametrize("cost", ["mse", "ce_readout"])
@pytest.mark.parametrize("estimator, sign, order", EP_CASES, ids=["one-sided", "random-plus", "random-minus", "symmetric"])
def test_ep_step_tends_to_truncated_bptt_at_the_order_of_its_estimator(estimator, sign, order, cost):
    """EP.step's `.grad` (−Δθ/B, the sign drawn by the learner's own sampler) against BPTT's through the
    last T_nudge steps, for β = 1e-2 and 1e-3 on the identity-ρ contracting net.

    Guards the sign and scale of every estimator and every drawn sign: `1/|β₂ − β₁|` (a negative draw
    loses its sign: error ≈ 2), a lost 1/β or 1/B, the sign of the nudge, the wrong state in the contrast.
    Tolerances: the error ratio over one decade of β lies in [7, 13] for O(β) and [70, 130] for O(β²)
    (measured 9.91–10.09 and 100.0; each band excludes the other order and a ratio ≈ 1, i.e. no
    convergence), and the error at β = 1e-3 is bounded with a margin over the measured value
    (O(β): 1.09e-3 MSE, 5.1e-4 CE, bound 2.5e-3; O(β²): 1.13e-6 MSE, 2.5e-8 CE, bound 3e-6)."""
    net, x, y = _net("identity", cost)
    with torch.no_grad():  # the theorem needs a converged free phase; here it is exact
        xd = net.input_drive(x)
        s = relax(net, xd, net.init_state(x), T_FREE - 1)
        assert max(float((a - b).abs().max()) for a, b in zip(s, net.step(xd, s))) < 1e-14
    bptt = _grads(BPTT(T_FREE, T_backprop=T_NUDGE), net, x, y)
    errors = []
    for beta in (1e-2, 1e-3):
        seed = _seed_for(sign, beta) if estimator == "random-sign" else 0
        errors.append(_rel(_grads(EP(beta, T_FREE, T_NUDGE, estimator, seed=seed), net, x, y), bptt))
    low, high, bound = (7.0, 13.0, 2.5e-3) if order == 1 else (70.0, 130.0, 3e-6)
    assert low < errors[0] / errors[1] < high, errors
    assert errors[1] < bound, errors


@pytest.mark.parametrize("cost, activation, nudge", [("mse", "sigmoid4", "outside"), ("ce_readout", "tanh", "inside")])
def test_opposite_random_sign_draws_average_to_the_symmetric_estimator(cost, activation, nudge):
    """An identity of the estimators at any β and any ρ: with g(b) = ∂Φ^b/∂θ(s^b),
    ½[(g(β) − g(0))/β + (g(−β) − g(0))/(−β)] = (g(β) − g(−β))/(2β). So the mean of the `.grad` of the
    two random-sign draws equals the symmetric estimator's `.grad`, to float64 round-off (the three
    learners run the same nudged phases; measured 1.7e-16 and 1.2e-16 relative, asserted 1e-10, while
    the two draws differ by 0.46 and 0.79).

    Guards the sign of the negative draw (with 1/|β₂ − β₁| the mean becomes (g(β) + g(−β) − 2g(0))/(2β),
    an O(1) relative change), the 1/(β₂ − β₁) of each estimator (the symmetric one without its ½ is off
    by 2) and which states enter the contrast (the symmetric contrast taken against s* instead of s^{−β}).
    Also checks that `estimate` with the drawn pair, scaled by −1/B, is what `step` writes (measured
    1.3e-16)."""
    net, x, y = _net(activation, cost, nudge=nudge, gain=1.0)
    beta = 0.3
    plus = _grads(EP(beta, 40, 8, "random-sign", seed=_seed_for(+1, beta)), net, x, y)
    minus = _grads(EP(beta, 40, 8, "random-sign", seed=_seed_for(-1, beta)), net, x, y)
    sym = _grads(EP(beta, 40, 8, "symmetric"), net, x, y)
    mean_vs_sym = _rel([(a + b) / 2 for a, b in zip(plus, minus)], sym)
    assert mean_vs_sym < 1e-10, mean_vs_sym
    assert _rel(plus, minus) > 0.1  # the two draws are different updates (measured 0.46 and 0.79)
    delta, _ = EP(beta, 40, 8).estimate(net, x, y, (0.0, -beta))
    step_vs_estimate = _rel([-d / x.shape[0] for d in delta], minus)
    assert step_vs_estimate < 1e-12, step_vs_estimate


# ------------------------------------------------------------------------------ C-EP reference
def reference_cep(net, x, y, beta: float, eta: float, T_free: int, T_nudge: int, symmetric: bool = False) -> list[torch.Tensor]:
    """θ after one C-EP batch (eq. C-EP) with plain SGD of learning rate η, written from the equations:

    s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ_t)) (nudge "inside"), or ρ(∂Φ/∂s) − β ∂ℓ/∂s_N on the output ("outside"),
    θ_{t+1} = θ_t − η g_t,  g_t = −(1/(βB)) (∂Φ^β/∂θ(x, s_{t+1}, θ_t) − ∂Φ^{β_t}/∂θ(x, s_t, θ_t)),
    β_0 = 0, β_t = β (t ≥ 1), from the free fixed point after T_free steps at θ_0. `symmetric` (eq.
    C-EP-sym): the phase at +β, then one at −β from the same free state (θ as the first phase left it),
    every g_t halved.

    Every derivative is taken by autograd of `phi` / `loss` of a copy of the net whose parameters are
    overwritten with θ_t before each step, so the input drive and ∂Φ/∂θ are those of θ_t by construction.
    """
    ref = copy.deepcopy(net)
    params = ref.param_list()
    theta = [p.detach().clone() for p in params]
    B = x.shape[0]

    def step(s, b):
        s = [t.detach().requires_grad_(True) for t in s]
        with torch.enable_grad():
            if ref.nudge == "inside" or b == 0.0:
                return [ref.activation(a).detach() for a in torch.autograd.grad(ref.phi(x, s, y, b), s)]
            a = torch.autograd.grad(ref.phi(x, s, y, 0.0), s)
            (dl,) = torch.autograd.grad(ref.loss(s, y).sum(), s[-1])
        out = [ref.activation(t).detach() for t in a]
        out[-1] = out[-1] - b * dl
        return out

    def dphi(s, b):
        with torch.enable_grad():
            g = torch.autograd.grad(ref.phi(x, s, y, b), params, allow_unused=True)
        return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]

    s_star = ref.init_state(x)
    for _ in range(T_free):
        s_star = step(s_star, 0.0)
    half = 2.0 if symmetric else 1.0
    for b in (beta, -beta) if symmetric else (beta,):
        s = s_star
        for t in range(T_nudge):
            with torch.no_grad():
                for p, th in zip(params, theta):
                    p.copy_(th)
            s_next = step(s, b)
            grads = [-(u - v) / (half * b * B) for u, v in zip(dphi(s_next, b), dphi(s, b if t > 0 else 0.0))]
            theta = [th - eta * g for th, g in zip(theta, grads)]
            s = s_next
    return theta


CEP_CASES = [  # (cost, ρ, nudge, estimator, drawn sign)
    ("mse", "sigmoid4", "inside", "one-sided", +1),
    ("mse", "sigmoid4", "outside", "random-sign", +1),
    ("mse", "sigmoid4", "outside", "random-sign", -1),
    ("ce_readout", "tanh", "inside", "one-sided", +1),
    ("ce_readout", "tanh", "inside", "random-sign", +1),
    ("ce_readout", "tanh", "inside", "random-sign", -1),
    ("mse", "sigmoid4", "outside", "symmetric", +1),
    ("ce_readout", "tanh", "inside", "symmetric", +1),
]


@pytest.mark.parametrize("cost, activation, nudge, estimator, sign", CEP_CASES)
def test_cep_step_equals_the_per_step_reference_at_finite_eta(cost, activation, nudge, estimator, sign):
    """One CEP.step with SGD (η = 0.05, β = 0.5, T 30/10, the sign drawn by the learner's sampler,
    gain-1 init) against `reference_cep`: the parameter change agrees to 1e-12 of its largest entry.

    Guards: the signed β of the drawn phase (abs(β) reverses the nudge of a negative draw), the input
    drive recomputed after each update (a stale drive shifts every later state by ≈ η ΔW₀ x), β_0 = 0
    at the first step (the readout's update with the CE cost), the 1/β and 1/B of `.grad`, and the θ_t
    (before the step's update) at which ∂Φ/∂θ is taken. Tolerance: both sides compute the same float64
    numbers by different routes (closed form vs autograd of Φ); measured 2e-15…2e-14 (max-abs error /
    max |change|, the change being 5e-3…3e-2), so 1e-12 leaves a margin of 50 and any of those mistakes,
    which change the update at order η or more, is far outside it."""
    beta, eta = 0.5, 0.05
    net, x, y = _net(activation, cost, nudge=nudge, gain=1.0)
    seed = _seed_for(sign, beta) if estimator == "random-sign" else 0
    want = reference_cep(net, x, y, sign * beta, eta, 30, 10, symmetric=estimator == "symmetric")
    before = [p.detach().clone() for p in net.param_list()]
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    CEP(beta, 30, 10, estimator, seed=seed).step(net, x, y, opt.step)
    got = [p.detach() for p in net.param_list()]
    error = _rel([g - b for g, b in zip(got, before)], [w - b for w, b in zip(want, before)])
    assert error < 1e-12, error


@pytest.mark.parametrize("sign", [+1, -1])
def test_each_drawn_sign_of_cep_tends_to_ep_of_that_sign(sign):
    """As η → 0 the summed C-EP update of a random-sign draw (η·B·Σ_t .grad) tends, linearly in η, to
    EP's Δθ at the same signed β (eq. C-EP telescopes; test_cep_summed_update_tends_to_ep covers
    one-sided only). Net 9-12-7 + CE readout, sigmoid4, β = 0.2, T 60/8.

    Guards the sign of the drawn β in C-EP and EP alike: with |β| the negative draw would tend to EP(+β),
    which differs from EP(−β) by 0.20 of the update (measured). Measured errors at η = 1e-3, 1e-4:
    4.8e-3, 4.7e-4 (+β) and 6.0e-3, 6.1e-4 (−β). Tolerances: < 2e-3 at η = 1e-4 (≈ 3× the measured),
    ratio over one decade of η in [5, 20] (O(η), as test_cep_summed_update_tends_to_ep)."""
    beta = 0.2
    net0, x, y = _net("sigmoid4", "ce_readout", gain=1.0, hidden=(12, 7))
    seed = _seed_for(sign, beta)
    want, _ = EP(beta, 60, 8).estimate(net0, x, y, (0.0, sign * beta))
    other, _ = EP(beta, 60, 8).estimate(net0, x, y, (0.0, -sign * beta))
    errors = []
    for eta in (1e-3, 1e-4):
        net = copy.deepcopy(net0)
        before = [p.detach().clone() for p in net.param_list()]
        opt = torch.optim.SGD(net.parameters(), lr=eta)
        CEP(beta, 60, 8, "random-sign", seed=seed).step(net, x, y, opt.step)
        summed = [(p.detach() - b) * (x.shape[0] / eta) for p, b in zip(net.param_list(), before)]
        errors.append(_rel(summed, want))
    assert errors[1] < 2e-3 and 5 < errors[0] / errors[1] < 20, errors
    assert _rel(other, want) > 0.1  # the other sign's update is far outside the bound (measured 0.20)


def test_symmetric_cep_tends_to_symmetric_ep():
    """As η → 0 the summed update of symmetric C-EP (+β phase, then −β from s*, each step halved: eq.
    C-EP-sym) tends, linearly in η, to the symmetric EP estimate (s^{+β} − s^{−β})/(2β) (the two phases
    telescope). Net 9-12-7 + CE readout, sigmoid4, β = 0.2, T 60/8, as the random-sign test.

    Guards the ½ (without it the sum is twice EP's), the sign of the second phase (+β twice gives the
    one-sided estimate, 0.2 away) and its start at s* (starting the −β phase from s^{+β} gives another
    estimate). Tolerances as test_each_drawn_sign_of_cep_tends_to_ep_of_that_sign."""
    beta = 0.2
    net0, x, y = _net("sigmoid4", "ce_readout", gain=1.0, hidden=(12, 7))
    want, _ = EP(beta, 60, 8).estimate(net0, x, y, (-beta, beta))
    one_sided, _ = EP(beta, 60, 8).estimate(net0, x, y, (0.0, beta))
    errors = []
    for eta in (1e-3, 1e-4):
        net = copy.deepcopy(net0)
        before = [p.detach().clone() for p in net.param_list()]
        opt = torch.optim.SGD(net.parameters(), lr=eta)
        learner = CEP(beta, 60, 8, "symmetric")
        assert learner.n_updates == 16
        learner.step(net, x, y, opt.step)
        summed = [(p.detach() - b) * (x.shape[0] / eta) for p, b in zip(net.param_list(), before)]
        errors.append(_rel(summed, want))
    assert errors[1] < 2e-3 and 5 < errors[0] / errors[1] < 20, errors
    assert _rel(one_sided, want) > 0.05

"""EP against BPTT (Ernoult et al. 2019, Theorem 1) and C-EP against EP, in float64.

With the identity activation the dynamics is exactly the gradient map of Φ and, on a contracting
net whose free phase has converged to machine precision, EP's per-step updates differ from BPTT's
gradients by O(β) (one-sided) and O(β²) (symmetric, the even powers cancel): dividing β by 10
divides the error by ≈10 and ≈100. The bands [7, 13] and [70, 130] allow for the next-order term
at β = 0.01 while excluding the other order (a ratio of 1 would mean no convergence at all).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from neurohw.cli import main
from neurohw.config import NetConfig
from neurohw.gdu import compute_gdu, gdu_config
from neurohw.learning import CEP, EP
from neurohw.nets.build import build_net
from tests.conftest import max_abs_diff


def gdu_error(*overrides: str) -> float:
    result = compute_gdu(gdu_config(list(overrides)))
    assert result.converged < 1e-14, "the free phase must have converged for the theorem to apply"
    return result.max_relative_error()


def test_one_sided_error_falls_linearly_with_beta():
    e1, e2, e3 = (gdu_error("activation=identity", f"beta={b}") for b in (1e-2, 1e-3, 1e-4))
    assert 7 < e1 / e2 < 13 and 7 < e2 / e3 < 13
    assert e3 < 3e-4  # the O(β) constant of this net is ≈ 1.2


def test_symmetric_error_falls_quadratically_with_beta():
    e1, e2 = (gdu_error("activation=identity", "estimator=symmetric", f"beta={b}") for b in (1e-2, 1e-3))
    assert 70 < e1 / e2 < 130
    assert e2 < 1e-5


def test_random_sign_is_one_sided_with_a_drawn_sign():
    errors = {gdu_error("activation=identity", "estimator=random-sign", f"seed={s}", "beta=1e-3") for s in range(4)}
    assert all(e < 2e-3 for e in errors)


def test_nonlinear_activation_agrees_approximately():
    """With ρ = tanh the step ρ(∂Φ/∂s) is not the gradient map of Φ, so the match is approximate
    (Ernoult et al. 2019 observe the same): the signs still agree almost everywhere.

    Measured (float64, the default GDU net, β = 1e-3; 8e027bf and a7d08b0): the neural updates differ
    from BPTT's by 4.45e-2 (layer 1), 1.24e-2 and 1.15e-2 (‖ΔEP − ΔBPTT‖/‖ΔBPTT‖); this is the
    non-gradient part, unchanged at β = 1e-4 (4.45e-2). The weight and bias updates differ by
    1.01e-3…1.24e-3, the O(β) term (1.0e-4…1.2e-4 at β = 1e-4). Signs agree on 99.916 % of the entries
    of the worst tensor (W1: 5 of 5,972 differ; 6 of 11,306 in all, the other in W2). Bounds with a
    stated margin: neural error < 5.5e-2 (1.23× the measured 4.45e-2), weight/bias error < 2e-3 (1.6×
    the measured 1.24e-3), every tensor's sign agreement > 99.8 % (2.4× the measured disagreement).
    A wrong sign, a missing 1/β or a wrong state breaks all three by orders of magnitude."""
    result = compute_gdu(gdu_config(["activation=tanh", "beta=1e-3"]))
    assert result.converged < 1e-14
    errors = result.relative_errors()
    assert result.max_relative_error() < 5.5e-2, errors
    assert max(e for k, e in errors.items() if not k.startswith("s")) < 2e-3, errors
    assert min(result.sign_agreement().values()) > 0.998, result.sign_agreement()


def test_gdu_file_layout_and_signs(tmp_path):
    out = tmp_path / "gdu.h5"
    assert main(["gdu", "--out", str(out), "activation=identity", "T_free=200", "T_nudge=7", "beta=0.001"]) == 0
    assert (tmp_path / "gdu.png").stat().st_size > 10_000
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "neurohw-gdu" and f.attrs["format_version"] == 1
        assert f.attrs["activation"] == "identity" and f.attrs["estimator"] == "one-sided"
        assert (f.attrs["T_free"], f.attrs["T_nudge"], f.attrs["beta"]) == (200, 7, 0.001)
        sizes = (10, 24, 16, 5)
        for n in range(3):
            assert f[f"weights/W{n}"].shape == (sizes[n + 1], sizes[n])
            assert f[f"weights/b{n}"].shape == (sizes[n + 1],)
            for group in ("ep", "bptt"):
                assert f[f"{group}/W{n}"].shape == (7, sizes[n + 1], sizes[n])
                assert f[f"{group}/b{n}"].shape == (7, sizes[n + 1])
                assert f[f"{group}/s{n}"].shape == (7, 4, sizes[n + 1])
        x, y = f["x"][()], f["y"][()]
        assert x.shape == (4, 10) and y.shape == (4, 5)
        # the sign of −∂L/∂·: at t = 0, −∂L/∂s_T = y − s_T for L = Σ ½‖s_T − y‖², s_T = s*
        s_star = _free_fixed_point(f)
        np.testing.assert_allclose(f["bptt/s2"][0], y - s_star, atol=1e-12)
        np.testing.assert_allclose(f["ep/s2"][0], y - s_star, atol=1e-12)  # identity ρ: exact at t = 0
        # the bias gradient is the batch sum of the neural one (bias enters like a unit input)
        np.testing.assert_allclose(f["bptt/b2"][0], f["bptt/s2"][0].sum(0), atol=1e-12)


def _free_fixed_point(f) -> np.ndarray:
    """The output state s* re-derived from the file alone (identity activation)."""
    W = [f[f"weights/W{n}"][()] for n in range(3)]
    b = [f[f"weights/b{n}"][()] for n in range(3)]
    x = f["x"][()]
    s = [np.zeros((x.shape[0], w.shape[0])) for w in W]
    for _ in range(int(f.attrs["T_free"])):
        s = [
            x @ W[0].T + b[0] + s[1] @ W[1],
            s[0] @ W[1].T + b[1] + s[2] @ W[2],
            s[1] @ W[2].T + b[2],
        ]
    return s[2]


# ------------------------------------------------------------------------------- C-EP → EP
CEP_NETS = {
    "fc_mse": (NetConfig(hidden=(12,), activation="sigmoid4"), (1, 3, 3)),
    "fc_ce": (NetConfig(hidden=(12, 7), activation="sigmoid4", cost="ce_readout"), (1, 3, 3)),
    "conv_max_ce": (NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), hidden=(), cost="ce_readout"), (1, 8, 8)),
}


def _cep_vs_ep(eta: float, arch: str = "fc_mse") -> float:
    g = torch.Generator().manual_seed(3)
    cfg, shape = CEP_NETS[arch]
    net = build_net(cfg, shape, 4, generator=g).double()
    x = torch.rand(5, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(5) % 4, 4).double()
    ep = EP(0.2, 60, 8)
    delta, _ = ep.estimate(net, x, y, (0.0, 0.2))
    before = [p.detach().clone() for p in net.param_list()]
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    CEP(0.2, 60, 8).step(net, x, y, opt.step)
    summed = [(p.detach() - b) * (x.shape[0] / eta) for p, b in zip(net.param_list(), before)]
    return max_abs_diff(summed, delta) / max(float(d.abs().max()) for d in delta)


@pytest.mark.parametrize("arch", list(CEP_NETS))
def test_cep_summed_update_tends_to_ep(arch):
    errors = [_cep_vs_ep(eta, arch) for eta in (1e-2, 1e-3, 1e-4)]
    assert errors[2] < 1e-3
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20  # O(η)


@pytest.mark.parametrize("estimator", ["one-sided", "random-sign", "symmetric"])
@pytest.mark.parametrize("arch", ["fc_ce", "conv_mse"])
def test_closed_form_engine_equals_autograd_engine(estimator, arch):
    cfg = {
        "fc_ce": NetConfig(hidden=(10, 8), cost="ce_readout", activation="hard_sigmoid"),
        "conv_mse": NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), hidden=(6,), activation="sigmoid4"),
    }[arch]
    g = torch.Generator().manual_seed(0)
    net = build_net(cfg, (1, 8, 8), 4, generator=g).double()
    x = torch.rand(6, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).double()
    closed, autograd = EP(0.3, 25, 6, estimator), EP(0.3, 25, 6, estimator, engine="autograd")
    betas = closed.sampler.draw()
    assert betas == autograd.sampler.draw()  # same seed, same sign
    a, _ = closed.estimate(net, x, y, betas)
    b, _ = autograd.estimate(net, x, y, betas)
    assert max_abs_diff(a, b) < 1e-10

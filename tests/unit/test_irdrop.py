"""First-order IR drop (docs/math.md eq. irdrop) against nodal analysis of the full resistive crossbar.

A first-order model's error is O(r²): halving r divides it by ≈ 4, and at small r it is a small
fraction of the O(r) effect it models. The references solve Kirchhoff's equations exactly (dense
float64 solves of ≤ 200 unknowns: residuals ~1e-13, far below the O(r²) terms compared).
"""

from __future__ import annotations

import numpy as np
import pytest

from neurohw.errors import ConfigError
from neurohw.substrates.analog import kernels, twin
from neurohw.substrates.analog.irdrop import Nodal, effective_matrix, exact_currents, first_order_matrix, pair_conductances
from neurohw.substrates.analog.model import PeripheralConfig, SubstrateConfig, crossbars_from_spec, load_scenario

from test_analog import small


def _physical(g: np.ndarray, sources: np.ndarray, r: float, driven: str) -> np.ndarray:
    """Currents into the sensing peripherals of an n_rows × n_cols device array `g`, solved on the
    physical layout (independent of irdrop's index mapping): row k's wire runs from its periphery at
    the column-0 end through nodes R[k, 0 … n_cols−1]; column c's wire from its periphery at the
    row-(n_rows−1) end through nodes C[n_rows−1 … 0, c]; one segment r between neighbours and from
    the periphery to the first node; device (k, c) joins R[k, c] and C[k, c]. `driven` = "rows": row
    peripheries are sources, columns sense (virtual ground); "cols": the reverse."""
    n_r, n_c = g.shape
    R = lambda k, c: k * n_c + c
    C = lambda k, c: n_r * n_c + k * n_c + c
    net, gw = Nodal(2 * n_r * n_c), 1.0 / r
    link = net.link

    for k in range(n_r):
        link(R(k, 0), None, gw, sources[k] if driven == "rows" else 0.0)
        for c in range(n_c - 1):
            link(R(k, c), R(k, c + 1), gw)
    for c in range(n_c):
        link(C(n_r - 1, c), None, gw, sources[c] if driven == "cols" else 0.0)
        for k in range(n_r - 1):
            link(C(k, c), C(k + 1, c), gw)
    for k in range(n_r):
        for c in range(n_c):
            link(R(k, c), C(k, c), g[k, c])
    v = net.solve()
    if driven == "rows":
        return np.array([v[C(n_r - 1, c)] * gw for c in range(n_c)])  # into the column peripheries
    return np.array([v[R(k, 0)] * gw for k in range(n_r)])


def _setup(seed=0, n_out=3, n_in=5, gamma=0.1):
    g = np.random.default_rng(seed)
    w = g.standard_normal((n_out, n_in))
    return w, float(np.abs(w).max()), gamma, g.standard_normal(n_in), g.standard_normal(n_out)


def test_zero_resistance_reads_the_programmed_weights():
    w, w_max, gamma, _, _ = _setup()
    eff, rel = effective_matrix(w, w_max, gamma, 0.0)
    assert rel == 0.0 and np.array_equal(eff, w)
    gp = pair_conductances(w, w_max, gamma)  # the differential pair reproduces W (eq. map)
    np.testing.assert_allclose(w_max / (1 - gamma) * (gp[:, 0::2] - gp[:, 1::2]).T, w, rtol=0, atol=1e-15)
    np.testing.assert_allclose(effective_matrix(w, w_max, gamma, 1e-12)[0], w, rtol=0, atol=1e-10)


def test_first_order_error_falls_as_r_squared():
    g = np.random.default_rng(1).random((6, 8))
    u = np.random.default_rng(2).standard_normal(6)
    ideal = g.T @ u
    errs = []
    for r in (2e-3, 1e-3, 5e-4):
        m, _ = first_order_matrix(g, r)
        exact = exact_currents(g, u, r)
        errs.append(np.abs(m.T @ u - exact).max())
        effect = np.abs(ideal - exact).max()
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios
    assert errs[-1] < 0.02 * effect  # the model captures the O(r) effect (~1 % residual at r = 5e-4)


@pytest.mark.parametrize("read", ["forward", "transposed"])
def test_effective_matrix_matches_the_physical_crossbar(read):
    """Forward reads (rows driven, columns sensed) and transposed reads (columns driven with ±v_j
    on the pair, rows sensed) of the full circuit agree with W_eff v and W_effᵀ v to O(r²)."""
    w, w_max, gamma, v_in, v_out = _setup()
    g = pair_conductances(w, w_max, gamma)
    kappa = w_max / (1 - gamma)
    errs = []
    for r in (2e-3, 1e-3):
        eff, _ = effective_matrix(w, w_max, gamma, r)
        if read == "forward":
            j = _physical(g, v_in, r, "rows")
            circuit, model, ideal = kappa * (j[0::2] - j[1::2]), eff @ v_in, w @ v_in
        else:
            src = np.empty(2 * len(v_out))
            src[0::2], src[1::2] = v_out, -v_out
            circuit, model, ideal = kappa * _physical(g, src, r, "cols"), eff.T @ v_out, w.T @ v_out
        errs.append(np.abs(model - circuit).max())
        assert np.abs(model - circuit).max() < 0.05 * np.abs(ideal - circuit).max()
    assert 3.5 < errs[0] / errs[1] < 4.5


def test_transposed_read_is_the_transpose_exactly():
    """Reciprocity: the exact transfer matrix of the transposed read is the transpose of the forward
    read's, at an r where IR drop changes outputs by ~20 % (so not a first-order accident)."""
    g = np.random.default_rng(5).random((5, 4))
    r = 2e-2
    fwd = np.stack([_physical(g, np.eye(5)[k], r, "rows") for k in range(5)])  # (row source, column current)
    tr = np.stack([_physical(g, np.eye(4)[c], r, "cols") for c in range(4)])  # (column source, row current)
    assert np.abs(fwd - g).max() > 0.05 * g.max()
    np.testing.assert_allclose(fwd, tr.T, rtol=0, atol=1e-13)


def test_crossbars_with_ir_drop_run_in_kernel_and_twin():
    """The effective matrices feed both engines unchanged: kernel = twin; outputs move with ir_drop."""
    for kind in ("fc", "ce"):
        spec = small(kind)
        cb0, cb = crossbars_from_spec(spec), crossbars_from_spec(spec, ir_drop=1e-3)
        sub = SubstrateConfig(dt_s=1e-7, t_max_s=5e-6, settle_tol=1e-6, seed=2)
        per = PeripheralConfig(w_noise=0.02, ir_drop=1e-3)
        x, ids = np.random.default_rng(4).random((5, 16)), np.arange(5)
        a, b = kernels.relax(cb, sub, per, x, ids), twin.relax(cb, sub, per, x, ids)
        np.testing.assert_allclose(a[2], b[2], rtol=0, atol=1e-12)
        assert np.abs(b[2] - twin.relax(cb0, sub, per, x, ids)[2]).max() > 1e-4


def test_bad_ir_drop_is_refused():
    with pytest.raises(ConfigError, match="ir_drop"):
        load_scenario(None, ["peripherals.ir_drop=-1e-4"])
    with pytest.raises(ConfigError, match=r"ir_drop = 0\.05 .*first-order.*layer 1"):
        crossbars_from_spec(small(), ir_drop=0.05)


def test_insitu_reads_see_ir_drop_while_pulses_hit_the_programmed_weights():
    from neurohw.config import load_config
    from neurohw.substrates.analog.insitu import InSituNet

    cfg = load_config("sims/insitu_constantstep.toml", ["net.hidden=[6]", "peripherals.ir_drop=1e-3"])
    net = InSituNet(cfg, 16, 5)
    cb = net.crossbars()
    for a, wf, wb in zip(net.arrays, cb.forward, cb.backward):
        w = a.read_weights()
        eff, _ = effective_matrix(w, float(np.abs(w).max()), 0.0, 1e-3)
        np.testing.assert_array_equal(wf, eff)
        assert wb is wf and not np.array_equal(wf, w)

"""IR drop along the wires of a crossbar, to first order in the wire resistance (docs/math.md eq. irdrop).

A read drives P lines with voltages u_p and senses the currents of Q crossing lines; device (p, q)
has conductance G_pq (normalised by g_max). Each wire segment has resistance r (normalised: the
card's `peripherals.ir_drop` = r_wire·g_max). The driven line p is fed at its q = 0 end through one
segment, and the sensed line q is held at virtual ground one segment beyond its p = P − 1 end. The
voltage across device (p, q) is u_p minus the drop along line p minus the rise along line q; with the
ideal currents I_pq = G_pq u_p in both (first order in r):

    δ^drv_pq = r Σ_q' (min(q, q') + 1) G_pq' u_p        δ^sns_pq = r Σ_p' (P − max(p, p')) G_p'q u_p'
    J_q = Σ_p G_pq (u_p − δ^drv_pq − δ^sns_pq) = Σ_p M_pq u_p,   M_pq = G_pq (1 − r A_pq − r C_pq)
    A_pq = Σ_q' (min(q, q') + 1) G_pq',   C_pq = Σ_p' (P − max(p, p')) G_p'q

(C comes from exchanging p and p' in the double sum of the sensed-line term). To first order IR drop
is thus linear in the input: a read through W behaves as a read through an effective matrix W_eff,
computed once per crossbar (no cost per read). The transposed read of the same array (feedback:
columns driven, rows sensed, through the same peripherals) sees exactly W_effᵀ: by reciprocity of a
linear passive network whose ports are ideal sources and virtual grounds, the transfer conductance
from row k to column c equals that from column c to row k, to every order in r (tested against the
circuit). IR drop therefore keeps the two reads of one array symmetric; it distorts W, most for the
devices far from both peripherals.

Layout (documented in docs/math.md): W (n_out, n_in) is stored as n_in rows × 2·n_out columns, the
differential pair of output j on the adjacent columns 2j (G⁺) and 2j + 1 (G⁻), with G± = γ + (1 − γ)
max(±W, 0)/w_max (γ = g_min/g_max; eq. map). Row drivers and row sense amplifiers sit at the column-0
end of the rows; column sense amplifiers and column drivers at the row-(n_in − 1) end of the columns.
A transposed read drives column 2j with +v_j and column 2j + 1 with −v_j.

`exact_currents` solves the full resistive network (nodal analysis, dense): the reference of the tests,
which check that the first-order model's error falls as r².
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neurohw.errors import ConfigError

#: largest first-order relative drop r·(A + C) accepted: beyond it the linearisation is not valid
MAX_RELATIVE_DROP = 0.3


def first_order_matrix(g: np.ndarray, r: float) -> tuple[np.ndarray, float]:
    """(M, max relative drop) for devices `g` (P driven lines × Q sensed lines): J = Mᵀ u (module doc)."""
    g = np.asarray(g, dtype=np.float64)
    P, Q = g.shape
    q1 = np.arange(1, Q + 1, dtype=np.float64)  # q + 1
    # A_pq = Σ_{q' ≤ q} (q' + 1) G_pq' + (q + 1) Σ_{q' > q} G_pq'
    head = np.cumsum(g * q1, axis=1)
    tail = g.sum(1, keepdims=True) - np.cumsum(g, axis=1)
    a = head + q1 * tail
    # C_pq = Σ_{p' ≥ p} (P − p') G_p'q + (P − p) Σ_{p' < p} G_p'q
    pp = (P - np.arange(P, dtype=np.float64))[:, None]  # P − p
    below = np.cumsum((g * pp)[::-1], axis=0)[::-1]
    above = np.cumsum(g, axis=0) - g
    c = below + pp * above
    rel = r * (a + c)
    return g * (1.0 - rel), float(rel.max(initial=0.0))


def pair_conductances(w: np.ndarray, w_max: float, gamma: float) -> np.ndarray:
    """The n_in × 2·n_out device array of W (n_out, n_in): columns 2j = G⁺_j, 2j + 1 = G⁻_j (normalised)."""
    w = np.asarray(w, dtype=np.float64)
    scale = (1.0 - gamma) / w_max if w_max > 0 else 0.0
    g = np.empty((w.shape[1], 2 * w.shape[0]))
    g[:, 0::2] = gamma + scale * np.maximum(w, 0.0).T
    g[:, 1::2] = gamma + scale * np.maximum(-w, 0.0).T
    return g


def effective_matrix(w: np.ndarray, w_max: float, gamma: float, r: float) -> tuple[np.ndarray, float]:
    """(W_eff, max relative drop): a forward read through W returns W_eff v and a transposed read W_effᵀ v
    (reciprocity, module doc); W_eff (n_out, n_in) equals W when r = 0."""
    w = np.asarray(w, dtype=np.float64)
    if r == 0.0 or w_max <= 0.0:
        return w.copy(), 0.0
    m, rel = first_order_matrix(pair_conductances(w, w_max, gamma), r)  # rows driven, columns sensed
    return w_max / (1.0 - gamma) * (m[:, 0::2] - m[:, 1::2]).T, rel


class Nodal:
    """A linear resistive network for nodal analysis: `link(i, j, G)` joins nodes i and j by a
    conductance G; `link(i, None, G, v)` joins node i to a fixed potential v; `solve()` → potentials."""

    def __init__(self, n: int):
        self.y, self.rhs = np.zeros((n, n)), np.zeros(n)

    def link(self, i: int, j: int | None, cond: float, v_fixed: float = 0.0) -> None:
        self.y[i, i] += cond
        if j is None:
            self.rhs[i] += cond * v_fixed
        else:
            self.y[j, j] += cond
            self.y[i, j] -= cond
            self.y[j, i] -= cond

    def solve(self) -> np.ndarray:
        return np.linalg.solve(self.y, self.rhs)


def exact_currents(g: np.ndarray, u: np.ndarray, r: float) -> np.ndarray:
    """Sensed currents J (Q,) of the full resistive network of `first_order_matrix`'s conventions,
    by nodal analysis (2PQ unknowns; small arrays only)."""
    g = np.asarray(g, dtype=np.float64)
    P, Q = g.shape
    n = P * Q
    a = lambda p, q: p * Q + q  # driven-line node of device (p, q)
    b = lambda p, q: n + p * Q + q  # sensed-line node
    net, gw = Nodal(2 * n), 1.0 / r
    for p in range(P):
        net.link(a(p, 0), None, gw, float(u[p]))  # driver → first node
        for q in range(Q - 1):
            net.link(a(p, q), a(p, q + 1), gw)
    for q in range(Q):
        for p in range(P - 1):
            net.link(b(p, q), b(p + 1, q), gw)
        net.link(b(P - 1, q), None, gw)  # last node → virtual ground
    for p in range(P):
        for q in range(Q):
            net.link(a(p, q), b(p, q), float(g[p, q]))
    v = net.solve()
    return np.array([v[b(P - 1, q)] * gw for q in range(Q)])


def with_ir_drop(cb, r: float, gamma: float):
    """A copy of Crossbars `cb` whose reads see IR drop: every array, read forward or transposed,
    through its W_eff (eq. irdrop); the per-read noise keeps the programmed max|W|. Raises
    ConfigError when the first-order model is out of range (relative drop > MAX_RELATIVE_DROP)."""
    if r == 0.0:
        return cb

    def eff(w, w_max, name):
        out, rel = effective_matrix(w, w_max, gamma, r)
        if rel > MAX_RELATIVE_DROP:
            raise ConfigError(
                f"peripherals.ir_drop = {r:g} gives a first-order relative IR drop of {rel:.3g} on {name} "
                f"(shape {tuple(w.shape)}); the first-order model holds below {MAX_RELATIVE_DROP}: lower ir_drop"
            )
        return out

    forward = [eff(wf, cb.w_max[i], f"layer {i + 1}'s crossbar W_{i}") for i, wf in enumerate(cb.forward)]
    backward = [  # the feedback into layer i − 1 reads W_i, or the untied W^b_i (C-VF) in its own array
        fw if wb is wf or np.array_equal(wb, wf) else eff(wb, float(np.abs(wb).max(initial=0.0)), f"layer {i + 1}'s feedback crossbar W^b_{i}")
        for i, (wf, wb, fw) in enumerate(zip(cb.forward, cb.backward, forward))
    ]
    readout = None if cb.readout is None else eff(cb.readout, cb.readout_w_max, "the readout crossbar")
    return dataclasses.replace(cb, forward=forward, backward=backward, readout=readout)

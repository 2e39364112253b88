"""The pure-numpy twin of the analog kernels (model.py eq. analog, eq. read), vectorised over the
batch. It draws the same counter-based random numbers as the kernels, so tests compare the two on
shared inputs; it is also the readable statement of what the kernels compute."""

from __future__ import annotations

import numpy as np

from neurohw.core import rng
from neurohw.substrates.analog.model import Crossbars, PeripheralConfig, SubstrateConfig, activation_numpy

# read identifiers in the noise keys: input drive, forward read of layer i (≥ 1), feedback into layer i, readout
READ_INPUT, READ_FORWARD, READ_BACKWARD, READ_READOUT = 0, 1, 2, 3


def quantise(v: np.ndarray, delta: float, bound: float) -> np.ndarray:
    """Clip to ±bound (bound > 0) and round to the nearest multiple of delta (delta > 0)."""
    if bound > 0:
        v = np.clip(v, -bound, bound)
    if delta > 0:
        v = np.rint(v / delta) * delta
    return v


def noisy(y: np.ndarray, vq_norm: np.ndarray, w_max: float, per: PeripheralConfig, seed: int, ids: np.ndarray,
          step: int, stage: int, read: int, layer: int) -> np.ndarray:
    """Per-read noise and the ADC applied to the ideal products y (B, n)."""
    if per.w_noise > 0 or per.out_noise > 0:
        j = np.arange(y.shape[1], dtype=np.uint64)[None, :]  # output j: one Ziggurat normal of its own key
        z = rng.zig_normal(rng.key(seed, ids.astype(np.uint64)[:, None], step, stage, read, layer, j))
        sigma = np.sqrt((per.w_noise * w_max * vq_norm[:, None]) ** 2 + per.out_noise**2)
        y = y + sigma * z
    return quantise(y, per.adc_delta, per.out_bound)


def read(w: np.ndarray, v: np.ndarray, w_max: float, per: PeripheralConfig, seed: int, ids: np.ndarray,
         step: int, stage: int, read_id: int, layer: int, transpose: bool = False, alpha: float = 1.0) -> np.ndarray:
    """α·R(W, v) of eq. read for a batch of vectors v (B, n_in); `transpose` reads W's columns; α is
    the layer's digital drift compensation."""
    vq = quantise(v, per.dac_delta, per.inp_bound if per.dac_bits else 0.0)
    y = vq @ w if transpose else vq @ w.T
    return alpha * noisy(y, np.sqrt((vq * vq).sum(1)), w_max, per, seed, ids, step, stage, read_id, layer)


def derivative(cb: Crossbars, per: PeripheralConfig, seed: int, ids: np.ndarray, drive0: np.ndarray, x_norm: np.ndarray,
               s: list[np.ndarray], step: int, stage: int, y: np.ndarray | None = None, beta: float = 0.0
               ) -> tuple[list[np.ndarray], float]:
    """ρ(u) − s for every layer (eq. analog without the 1/τ; with the nudge of eq. analog-nudge when
    β ≠ 0) and the per-sample max |ρ(u) − s|."""
    n = len(s)
    out = []
    for i in range(n):
        if i == 0:
            u = cb.alpha[0] * noisy(drive0, x_norm, cb.w_max[0], per, seed, ids, step, stage, READ_INPUT, 0)
        else:
            u = read(cb.forward[i], s[i - 1], cb.w_max[i], per, seed, ids, step, stage, READ_FORWARD, i, alpha=cb.alpha[i])
        u = u + cb.biases[i]
        if i + 1 < n:
            u = u + read(cb.backward[i + 1], s[i + 1], cb.w_max[i + 1], per, seed, ids, step, stage, READ_BACKWARD, i + 1,
                         transpose=True, alpha=cb.alpha[i + 1])
        nudge = None
        if i == n - 1 and beta != 0.0:
            if cb.readout is None:
                nudge = beta * (y - s[i])
            else:  # −β ∂ℓ/∂s_L through the readout crossbar, read transposed
                p = read(cb.readout, s[i], cb.readout_w_max, per, seed, ids, step, stage, READ_READOUT, n,
                         alpha=cb.readout_alpha) + cb.readout_bias
                p = np.exp(p - p.max(1, keepdims=True))
                err = p / p.sum(1, keepdims=True) - y
                nudge = -beta * read(cb.readout, err, cb.readout_w_max, per, seed, ids, step, stage, READ_READOUT + 1, n,
                                     transpose=True, alpha=cb.readout_alpha)
        if nudge is not None and not cb.nudge_outside:
            u = u + nudge
        d = activation_numpy(cb.act_id, u) - s[i]
        out.append(d + nudge if nudge is not None and cb.nudge_outside else d)
    gap = np.max(np.stack([np.abs(d).max(1) for d in out]), axis=0)
    return out, gap


def relax(cb: Crossbars, sub: SubstrateConfig, per: PeripheralConfig, x: np.ndarray, ids: np.ndarray,
          s0: list[np.ndarray] | None = None, y: np.ndarray | None = None, beta: float = 0.0,
          steps: int | None = None, phase: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Integrate from s0 (default 0): the free phase until settled (steps=None), or exactly `steps`
    steps (a nudged interval, with target y and strength β). `phase` separates the noise draws of
    successive phases. Returns (final states per layer, steps taken per sample, outputs)."""
    x = np.asarray(x, dtype=np.float64)
    b = x.shape[0]
    seed = sub.seed
    xq = quantise(x, per.dac_delta, per.inp_bound if per.dac_bits else 0.0)
    drive0 = xq @ cb.forward[0].T  # the static input's ideal read; noise is drawn per read
    x_norm = np.sqrt((xq * xq).sum(1))
    s = [np.zeros((b, n)) for n in cb.sizes] if s0 is None else [np.array(t, dtype=np.float64) for t in s0]
    taken = np.zeros(b, dtype=np.int64)
    active = np.ones(b, dtype=bool)
    h = sub.dt_s / sub.tau_s
    settle = steps is None
    for t in range(sub.max_steps if settle else steps):
        key_t = t + phase * (sub.max_steps + 1)
        k1, gap = derivative(cb, per, seed, ids, drive0, x_norm, s, key_t, 0, y, beta)
        if settle:
            active &= ~(gap < sub.settle_tol)
        if not active.any():
            break
        if sub.integrator == "euler":
            inc = [h * k for k in k1]
        else:
            s2 = [a + 0.5 * h * k for a, k in zip(s, k1)]
            k2, _ = derivative(cb, per, seed, ids, drive0, x_norm, s2, key_t, 1, y, beta)
            s3 = [a + 0.5 * h * k for a, k in zip(s, k2)]
            k3, _ = derivative(cb, per, seed, ids, drive0, x_norm, s3, key_t, 2, y, beta)
            s4 = [a + h * k for a, k in zip(s, k3)]
            k4, _ = derivative(cb, per, seed, ids, drive0, x_norm, s4, key_t, 3, y, beta)
            inc = [h / 6.0 * (a + 2.0 * c + 2.0 * d + e) for a, c, d, e in zip(k1, k2, k3, k4)]
        m = active[:, None]
        s = [np.where(m, a + d, a) for a, d in zip(s, inc)]
        taken += active
    return s, taken, output(cb, per, seed, ids, s, sub.max_steps)


def output(cb: Crossbars, per: PeripheralConfig, seed: int, ids: np.ndarray, s: list[np.ndarray], step: int) -> np.ndarray:
    """The output scores: the last state (mse) or one read of the readout crossbar (ce_readout)."""
    if cb.readout is None:
        return s[-1]
    return read(cb.readout, s[-1], cb.readout_w_max, per, seed, ids, step, 0, READ_READOUT, len(s),
                alpha=cb.readout_alpha) + cb.readout_bias

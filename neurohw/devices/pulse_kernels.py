"""Stochastic pulse-train updates of a crossbar of pulsed devices: a numba kernel and its numpy twin
(docs/math.md eq. pulse, eq. pulse trains).

`outer_update(array, xs, ds, lr, update, seed, counter, engine)` writes W ← W − lr·Σ_b d_b x_bᵀ as one
vector update per sample b (as aihwkit does): per sample a train of BL slots, x_j and d_i fire in a
slot with probabilities min(1, B|x_j|) and min(1, A|d_i|), and every coincidence is one pulse of the
device law with cycle-to-cycle noise (and a fresh write-noise draw). All random numbers come from
the counter-based generator of the analog substrate, keyed by (seed, counter, sample, slot, kind,
index), so the kernel and the twin draw the same ones.
"""

from __future__ import annotations

import numpy as np

from neurohw.devices.pulsed import LAW_IDS, PulsedArray, UpdateConfig
from neurohw.substrates.analog import rng as crng

KIND_X, KIND_D, KIND_C2C, KIND_WRITE = 0, 1, 2, 3


def train_parameters(x: np.ndarray, d: np.ndarray, lr: float, g: float, cfg: UpdateConfig) -> tuple[int, float, float]:
    """(BL, A, B) of one vector update (aihwkit's update and BL management); BL = 0: no update."""
    xm, dm = float(np.abs(x).max(initial=0.0)), float(np.abs(d).max(initial=0.0))
    eta = abs(lr)
    if eta == 0 or xm == 0 or dm == 0:
        return 0, 0.0, 0.0
    k = eta * xm * dm / g
    bl = max(min(int(np.ceil(k)), cfg.desired_bl), 1) if cfg.update_bl_management else cfg.desired_bl
    a = b = np.sqrt(eta / (g * bl))
    if cfg.update_management or cfg.update_bl_management:
        d_eff = dm * (cfg.desired_bl / k if k > cfg.desired_bl else 1.0)
        a, b = a * np.sqrt(xm / d_eff), b * np.sqrt(d_eff / xm)
    return bl, float(a), float(b)


def _law_params(array: PulsedArray) -> tuple:
    c = array.config
    return (LAW_IDS[c.law], c.w_max, c.w_min, c.A_up, c.A_down, c.a, c.b, c.dw_min_std, c.write_noise_std * c.dw_min)


# ------------------------------------------------------------------------------------ numpy twin
def _shape_factor_np(array: PulsedArray, w: np.ndarray, up: np.ndarray) -> np.ndarray:
    return np.where(up, array.shape_factor(w, True), array.shape_factor(w, False))


def outer_update_twin(array: PulsedArray, xs: np.ndarray, ds: np.ndarray, lr: float, update: UpdateConfig,
                      seed: int, counter: int) -> int:
    """The twin: slot by slot, all coincidences of a slot pulsed at once. Returns the pulse count."""
    c = array.config
    n_out, n_in = array.shape
    total = 0
    sign_lr = np.sign(lr)
    flat = (np.arange(n_out, dtype=np.uint64)[:, None] * np.uint64(n_in) + np.arange(n_in, dtype=np.uint64)[None, :])
    for b in range(xs.shape[0]):
        x, d = xs[b], ds[b]
        bl, a_, b_ = train_parameters(x, d, lr, array.granularity, update)
        up = (sign_lr * np.sign(d)[:, None] * np.sign(x)[None, :]) < 0
        for k in range(bl):
            fx = crng.uniform(crng.key(seed, counter, b, k, KIND_X, np.arange(n_in, dtype=np.uint64))) <= np.minimum(1.0, b_ * np.abs(x))
            fd = crng.uniform(crng.key(seed, counter, b, k, KIND_D, np.arange(n_out, dtype=np.uint64))) <= np.minimum(1.0, a_ * np.abs(d))
            hit = fd[:, None] & fx[None, :] & (x != 0)[None, :] & (d != 0)[:, None]
            if not hit.any():
                continue
            total += int(hit.sum())
            xi = crng.normal(crng.key(seed, counter, b, k, KIND_C2C, flat))
            step = np.where(up, array.step_up, -array.step_down)
            new = np.clip(array.w + step * _shape_factor_np(array, array.w, up) * (1.0 + c.dw_min_std * xi), array.b_min, array.b_max)
            array.w = np.where(hit, new, array.w)
            if c.write_noise_std > 0:
                wn = c.write_noise_std * c.dw_min * crng.normal(crng.key(seed, counter, b, k, KIND_WRITE, flat))
                array.write_noise = np.where(hit, wn, array.write_noise)
    return total


# ---------------------------------------------------------------------------------- numba kernel
_KERNEL = None


def _build_kernel():
    from numba import njit

    from neurohw.substrates.analog.kernels import _mix, _normal_pair
    from neurohw.substrates.analog.rng import INV53, S11

    @njit(cache=True, inline="always")
    def _u(k):
        return (np.float64(_mix(k) >> S11) + 1.0) * INV53

    @njit(cache=True, inline="always")
    def _key5(seed, counter, b, k, kind):
        z = _mix(np.uint64(seed))
        z = _mix(z ^ np.uint64(counter))
        z = _mix(z ^ np.uint64(b))
        z = _mix(z ^ np.uint64(k))
        return _mix(z ^ np.uint64(kind))

    @njit(cache=True, inline="always")
    def _factor(law, up, w, bmin, bmax, gu, gd, w_max, w_min, A_up, A_down, a, bb):
        if law == 0:
            return 1.0
        if law == 1:
            return 1.0 - gu * w / w_max if up else 1.0 - gd * w / w_min
        if law == 2:
            if up:
                return 1.0 - w / bmax if bmax != 0.0 else 0.0
            return 1.0 - w / bmin if bmin != 0.0 else 0.0
        span = bmax - bmin
        if span <= 0.0:
            return 0.0
        if law == 3:
            z = 2.0 * a * w / span + bb
            f = 1.0 - A_up * np.exp(gu * z) if up else 1.0 - A_down * np.exp(-gd * z)
            return max(f, 0.0)
        base = (bmax - w) / span if up else (w - bmin) / span
        return max(base, 0.0) ** (gu if up else gd)

    @njit(cache=True)
    def kernel(w, wn, step_up, step_down, b_min, b_max, gamma_up, gamma_down, law, w_max, w_min, A_up, A_down, a, bb,
               dw_std, wn_std, xs, ds, bls, as_, bs, sign_lr, seed, counter):
        n_out, n_in = w.shape
        fired_x = np.empty(n_in, dtype=np.int64)
        fired_d = np.empty(n_out, dtype=np.int64)
        total = 0
        for b in range(xs.shape[0]):
            for k in range(bls[b]):
                nx = 0
                kx = _key5(seed, counter, b, k, 0)
                for j in range(n_in):
                    if xs[b, j] != 0.0 and _u(_mix(kx ^ np.uint64(j))) <= min(1.0, bs[b] * abs(xs[b, j])):
                        fired_x[nx] = j
                        nx += 1
                if nx == 0:
                    continue
                nd = 0
                kd = _key5(seed, counter, b, k, 1)
                for i in range(n_out):
                    if ds[b, i] != 0.0 and _u(_mix(kd ^ np.uint64(i))) <= min(1.0, as_[b] * abs(ds[b, i])):
                        fired_d[nd] = i
                        nd += 1
                kc = _key5(seed, counter, b, k, 2)
                kw = _key5(seed, counter, b, k, 3)
                for p in range(nd):
                    i = fired_d[p]
                    for q in range(nx):
                        j = fired_x[q]
                        up = sign_lr * ds[b, i] * xs[b, j] < 0.0
                        idx = np.uint64(i * n_in + j)
                        xi = _normal_pair(_mix(kc ^ idx))[0]
                        wij = w[i, j]
                        f = _factor(law, up, wij, b_min[i, j], b_max[i, j], gamma_up[i, j], gamma_down[i, j],
                                    w_max, w_min, A_up, A_down, a, bb)
                        st = step_up[i, j] if up else -step_down[i, j]
                        v = wij + st * f * (1.0 + dw_std * xi)
                        w[i, j] = min(max(v, b_min[i, j]), b_max[i, j])
                        if wn_std > 0.0:
                            wn[i, j] = wn_std * _normal_pair(_mix(kw ^ idx))[0]
                        total += 1
        return total

    return kernel


def outer_update(array: PulsedArray, xs: np.ndarray, ds: np.ndarray, lr: float, update: UpdateConfig,
                 seed: int, counter: int, engine: str = "kernel") -> int:
    """W ← W − lr·Σ_b d_b x_bᵀ as pulses (per-sample vector updates); returns the number of pulses."""
    xs = np.ascontiguousarray(np.atleast_2d(xs), dtype=np.float64)
    ds = np.ascontiguousarray(np.atleast_2d(ds), dtype=np.float64)
    if engine == "twin":
        return outer_update_twin(array, xs, ds, lr, update, seed, counter)
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    params = [train_parameters(xs[b], ds[b], lr, array.granularity, update) for b in range(xs.shape[0])]
    bls = np.array([p[0] for p in params], dtype=np.int64)
    as_ = np.array([p[1] for p in params])
    bs = np.array([p[2] for p in params])
    law, w_max, w_min, A_up, A_down, a, bb, dw_std, wn_std = _law_params(array)
    return int(_KERNEL(array.w, array.write_noise, array.step_up, array.step_down, array.b_min, array.b_max,
                       array.gamma_up, array.gamma_down, law, w_max, w_min, A_up, A_down, a, bb, dw_std, wn_std,
                       xs, ds, bls, as_, bs, float(np.sign(lr)), seed, counter))

"""Stochastic pulse-train updates of a crossbar of pulsed devices: a numba kernel and its numpy twin
(docs/math.md eq. pulse, eq. pulse trains).

`outer_update(array, xs, ds, lr, update, seed, counter, engine)` writes W ← W − lr·Σ_b d_b x_bᵀ as one
vector update per sample b (as aihwkit does): per sample a train of BL slots, x_j and d_i fire in a
slot with probabilities min(1, B|x_j|) and min(1, A|d_i|), and every coincidence is one pulse of the
device law with cycle-to-cycle noise (and a fresh write-noise draw). All random numbers come from
the counter-based generator (neurohw/core/rng.py), keyed by (seed, counter, sample, slot, kind, index),
so the kernel and the twin draw the same ones.

The kernel takes its parameters as three typed records: `Devices` (the arrays of the crossbar, updated
in place), `pulsed.LawParams` (the law's index and scalars) and `Trains` (the per-sample trains). The
step shape is the law's scalar form from the registry pulsed.PULSE_LAWS at index LAW_IDS; numba is
imported when the kernel is first built.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from neurohw.core import rng as crng
from neurohw.devices.pulsed import LAWS, PULSE_LAWS, PulsedArray, UpdateConfig

KIND_X, KIND_D, KIND_C2C, KIND_WRITE = 0, 1, 2, 3


class Devices(NamedTuple):
    """The arrays of a PulsedArray the kernel reads (`w` and `write_noise` it writes)."""

    w: np.ndarray
    write_noise: np.ndarray
    step_up: np.ndarray
    step_down: np.ndarray
    b_min: np.ndarray
    b_max: np.ndarray
    gamma_up: np.ndarray
    gamma_down: np.ndarray


class Trains(NamedTuple):
    """The pulse trains of a batch of vector updates (`train_parameters` per sample)."""

    xs: np.ndarray  # (B, n_in)
    ds: np.ndarray  # (B, n_out)
    bl: np.ndarray  # (B,) int64 slots per sample (0: no update)
    a: np.ndarray  # (B,) d-side probability factor A
    b: np.ndarray  # (B,) x-side probability factor B
    sign_lr: float


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
    """The pulse kernel and the key of the sources compiled into it (core/jit.py)."""
    from numba import njit

    from neurohw.core import jit, rng_kernels
    from neurohw.core.rng_kernels import mix, normal_pair, uniform

    factor = jit.table([PULSE_LAWS.get(name).kernel for name in LAWS])
    sources = jit.sources_key(crng, rng_kernels, jit, ",".join(LAWS), *(PULSE_LAWS.get(name).kernel for name in LAWS))

    @njit(inline="always")
    def key5(seed, counter, b, k, kind):
        z = mix(np.uint64(seed))
        z = mix(z ^ np.uint64(counter))
        z = mix(z ^ np.uint64(b))
        z = mix(z ^ np.uint64(k))
        return mix(z ^ np.uint64(kind))

    @njit(cache=True)
    def kernel(dev, law, trains, seed, counter, sources):
        w, wn, xs, ds = dev.w, dev.write_noise, trains.xs, trains.ds
        n_out, n_in = w.shape
        fired_x = np.empty(n_in, dtype=np.int64)
        fired_d = np.empty(n_out, dtype=np.int64)
        total = 0
        for b in range(xs.shape[0]):
            for k in range(trains.bl[b]):
                nx = 0
                kx = key5(seed, counter, b, k, 0)
                for j in range(n_in):
                    if xs[b, j] != 0.0 and uniform(mix(kx ^ np.uint64(j))) <= min(1.0, trains.b[b] * abs(xs[b, j])):
                        fired_x[nx] = j
                        nx += 1
                if nx == 0:
                    continue
                nd = 0
                kd = key5(seed, counter, b, k, 1)
                for i in range(n_out):
                    if ds[b, i] != 0.0 and uniform(mix(kd ^ np.uint64(i))) <= min(1.0, trains.a[b] * abs(ds[b, i])):
                        fired_d[nd] = i
                        nd += 1
                kc = key5(seed, counter, b, k, 2)
                kw = key5(seed, counter, b, k, 3)
                for p in range(nd):
                    i = fired_d[p]
                    for q in range(nx):
                        j = fired_x[q]
                        up = trains.sign_lr * ds[b, i] * xs[b, j] < 0.0
                        idx = np.uint64(i * n_in + j)
                        xi = normal_pair(mix(kc ^ idx))[0]
                        wij = w[i, j]
                        f = factor(law.law, (up, wij, dev.b_min[i, j], dev.b_max[i, j], dev.gamma_up[i, j],
                                             dev.gamma_down[i, j], law))
                        st = dev.step_up[i, j] if up else -dev.step_down[i, j]
                        v = wij + st * f * (1.0 + law.dw_min_std * xi)
                        w[i, j] = min(max(v, dev.b_min[i, j]), dev.b_max[i, j])
                        if law.write_noise > 0.0:
                            wn[i, j] = law.write_noise * normal_pair(mix(kw ^ idx))[0]
                        total += 1
        return total

    return kernel, sources


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
    kernel, sources = _KERNEL
    params = [train_parameters(xs[b], ds[b], lr, array.granularity, update) for b in range(xs.shape[0])]
    trains = Trains(xs, ds, np.array([p[0] for p in params], dtype=np.int64), np.array([p[1] for p in params], dtype=np.float64),
                    np.array([p[2] for p in params], dtype=np.float64), float(np.sign(lr)))
    dev = Devices(array.w, array.write_noise, array.step_up, array.step_down, array.b_min, array.b_max,
                  array.gamma_up, array.gamma_down)
    return int(kernel(dev, array.config.law_params(), trains, seed, counter, sources))

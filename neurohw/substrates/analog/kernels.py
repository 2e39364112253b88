"""Numba kernels of the analog substrate (model.py eq. analog, eq. read): one sample per thread.

Each function here has a twin in twin.py that computes the same numbers with numpy; tests assert
that kernel and twin agree. numba is imported here (and in core/rng_kernels.py) only, so `import neurohw`
stays light.

The kernel's parameters travel as four typed records (namedtuples, passed by value into the compiled
code): `Layers` (the crossbars), `Dynamics` (activation, integrator, step, settling), `ReadModel` (DAC,
ADC, noise) and, built inside the kernel per draw, `Key` (the noise coordinates up to the read). The
activation ρ is the registry's kernel form (core/activations.py) at the index model.ACTIVATION_IDS gives
it. Only `relax_kernel` is cached on disk; its last argument `SOURCES` makes numba recompile it when the
generator, the activation forms or this table change (core/jit.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numba.typed import List

from neurohw.core import jit, rng, rng_kernels
from neurohw.core.activations import ACTIVATIONS
from neurohw.core.rng_kernels import mix, zig_normal
from neurohw.substrates.analog.model import ACTIVATION_IDS, INTEGRATORS, Crossbars, PeripheralConfig, SubstrateConfig


class Layers(NamedTuple):
    """The crossbars of model.Crossbars as the kernel reads them (float64, C-contiguous)."""

    forward: List  # W_i (n_{i+1}, n_i) per dynamic layer
    backward: List  # the matrix read transposed for the feedback into layer i − 1
    biases: List
    w_max: np.ndarray  # (L,) max|W_i|, the scale of the per-read weight noise
    alpha: np.ndarray  # (L,) drift compensation of each crossbar's reads
    sizes: np.ndarray  # (L,) int64 n_1 … n_L
    offsets: np.ndarray  # (L + 1,) int64: layer i's state is s[offsets[i] : offsets[i + 1]]


class Dynamics(NamedTuple):
    act: int  # model.ACTIVATION_IDS
    integrator: int  # model.INTEGRATORS
    h: float  # Δt/τ
    max_steps: int
    tol: float  # a sample has settled when max|ρ(u) − s| < tol


class ReadModel(NamedTuple):
    """The peripherals of every read (eq. read)."""

    dac_delta: float
    inp_bound: float  # inputs clipped to ±inp_bound before the DAC (0: no DAC)
    w_noise: float
    out_noise: float
    adc_delta: float
    out_bound: float


class Key(NamedTuple):
    """The coordinates of a draw up to the read and the layer (docs/math.md eq. counter rng)."""

    seed: int
    sample: int
    step: int
    stage: int


_rho = jit.table([ACTIVATIONS.get(name).kernel for name in ACTIVATION_IDS])
SOURCES = jit.sources_key(rng, rng_kernels, jit, ",".join(ACTIVATION_IDS),
                          *(ACTIVATIONS.get(name).kernel for name in ACTIVATION_IDS))


@njit(inline="always")
def _read_key(key, read, layer):
    """The key of one read, up to the element index (rng.key's first coordinates)."""
    k = mix(np.uint64(key.seed))
    k = mix(k ^ np.uint64(key.sample))
    k = mix(k ^ np.uint64(key.step))
    k = mix(k ^ np.uint64(key.stage))
    k = mix(k ^ np.uint64(read))
    return mix(k ^ np.uint64(layer))


@njit(inline="always")
def _quantise(v, delta, bound):
    if bound > 0.0:
        v = min(max(v, -bound), bound)
    if delta > 0.0:
        v = np.rint(v / delta) * delta
    return v


@njit
def _noisy(y, norm, w_max, rd, key, read, layer):
    """Per-read noise, then clipping and the ADC, on the ideal products y (in place)."""
    if rd.w_noise > 0.0 or rd.out_noise > 0.0:
        # weight and output noise are independent Gaussians on the same output: one draw of their
        # combined std; output j takes the Ziggurat normal of its own key (eq. read)
        s_w = rd.w_noise * w_max * norm
        sigma = np.sqrt(s_w * s_w + rd.out_noise * rd.out_noise)
        base = _read_key(key, read, layer)
        for j in range(y.shape[0]):
            y[j] += sigma * zig_normal(mix(base ^ np.uint64(j)))
    if rd.adc_delta > 0.0 or rd.out_bound > 0.0:
        for j in range(y.shape[0]):
            y[j] = _quantise(y[j], rd.adc_delta, rd.out_bound)


@njit(fastmath=True)
def _matvec(w, v, out):
    """out_j = Σ_k W[j, k] v_k (fastmath: the reduction may be reordered and vectorised)."""
    for j in range(out.shape[0]):
        acc = 0.0
        for k in range(v.shape[0]):
            acc += w[j, k] * v[k]
        out[j] = acc


@njit
def _matvec_t(w, v, out):
    """out_j = Σ_k v_k W[k, j] (row-wise axpy)."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    for k in range(v.shape[0]):
        q = v[k]
        if q != 0.0:
            for j in range(out.shape[0]):
                out[j] += q * w[k, j]


@njit
def _read(w, v, transpose, buf_in, out, w_max, rd, key, read, layer):
    """out = R(W, v) (eq. read); buf_in holds the quantised input."""
    m = v.shape[0]
    norm2 = 0.0
    for k in range(m):
        q = _quantise(v[k], rd.dac_delta, rd.inp_bound)
        buf_in[k] = q
        norm2 += q * q
    if transpose:
        _matvec_t(w, buf_in[:m], out)
    else:
        _matvec(w, buf_in[:m], out)
    _noisy(out, np.sqrt(norm2), w_max, rd, key, read, layer)


@njit
def _derivative(net, act, drive0, x_norm, s, k, u, buf_in, tmp, rd, key):
    """k = ρ(u) − s for every layer; returns max |k|."""
    sizes, offsets = net.sizes, net.offsets
    n = sizes.shape[0]
    gap = 0.0
    for i in range(n):
        a, m = offsets[i], sizes[i]
        ui = u[a : a + m]
        if i == 0:
            for j in range(m):
                ui[j] = drive0[j]
            _noisy(ui, x_norm, net.w_max[0], rd, key, 0, 0)
        else:
            p = offsets[i - 1]
            _read(net.forward[i], s[p : p + sizes[i - 1]], False, buf_in, ui, net.w_max[i], rd, key, 1, i)
        bi = net.biases[i]
        ai = net.alpha[i]
        for j in range(m):
            ui[j] = ai * ui[j] + bi[j]
        if i + 1 < n:
            q = offsets[i + 1]
            t = tmp[:m]
            _read(net.backward[i + 1], s[q : q + sizes[i + 1]], True, buf_in, t, net.w_max[i + 1], rd, key, 2, i + 1)
            a_next = net.alpha[i + 1]
            for j in range(m):
                ui[j] += a_next * t[j]
        for j in range(m):
            d = _rho(act, ui[j]) - s[a + j]
            k[a + j] = d
            if abs(d) > gap:
                gap = abs(d)
    return gap


@njit(parallel=True, cache=True)
def relax_kernel(x, ids, net, dyn, rd, seed, sources):
    """Free phase of every sample (prange): returns states (B, Σn), steps (B,). `sources`: SOURCES."""
    b_count = x.shape[0]
    n = net.sizes.shape[0]
    total = net.offsets[n]
    widest = max(x.shape[1], net.sizes.max())
    states = np.zeros((b_count, total))
    steps = np.zeros(b_count, dtype=np.int64)
    w0 = net.forward[0]
    act, h = dyn.act, dyn.h
    for b in prange(b_count):
        sid = ids[b]
        buf_in = np.empty(widest)
        tmp = np.empty(widest)
        u = np.empty(total)
        drive0 = np.empty(net.sizes[0])
        x_norm2 = 0.0
        for kk in range(x.shape[1]):
            q = _quantise(x[b, kk], rd.dac_delta, rd.inp_bound)
            buf_in[kk] = q
            x_norm2 += q * q
        _matvec(w0, buf_in[: x.shape[1]], drive0)
        x_norm = np.sqrt(x_norm2)
        s = np.zeros(total)
        k1 = np.empty(total)
        k2 = np.empty(total)
        k3 = np.empty(total)
        k4 = np.empty(total)
        s2 = np.empty(total)
        done = 0
        for t in range(dyn.max_steps):
            gap = _derivative(net, act, drive0, x_norm, s, k1, u, buf_in, tmp, rd, Key(seed, sid, t, 0))
            if gap < dyn.tol:
                break
            if dyn.integrator == 0:
                for j in range(total):
                    s[j] += h * k1[j]
            else:
                for j in range(total):
                    s2[j] = s[j] + 0.5 * h * k1[j]
                _derivative(net, act, drive0, x_norm, s2, k2, u, buf_in, tmp, rd, Key(seed, sid, t, 1))
                for j in range(total):
                    s2[j] = s[j] + 0.5 * h * k2[j]
                _derivative(net, act, drive0, x_norm, s2, k3, u, buf_in, tmp, rd, Key(seed, sid, t, 2))
                for j in range(total):
                    s2[j] = s[j] + h * k3[j]
                _derivative(net, act, drive0, x_norm, s2, k4, u, buf_in, tmp, rd, Key(seed, sid, t, 3))
                for j in range(total):
                    s[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j])
            done += 1
        steps[b] = done
        for j in range(total):
            states[b, j] = s[j]
    return states, steps


def layers(cb: Crossbars) -> Layers:
    typed = lambda arrays: List([np.ascontiguousarray(a, dtype=np.float64) for a in arrays])
    sizes = np.asarray(cb.sizes, dtype=np.int64)
    return Layers(typed(cb.forward), typed(cb.backward), typed(cb.biases), np.asarray(cb.w_max, dtype=np.float64),
                  np.asarray(cb.alpha, dtype=np.float64), sizes, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def dynamics(cb: Crossbars, sub: SubstrateConfig) -> Dynamics:
    return Dynamics(int(cb.act_id), INTEGRATORS[sub.integrator], float(sub.dt_s / sub.tau_s), int(sub.max_steps),
                    float(sub.settle_tol))


def read_model(per: PeripheralConfig) -> ReadModel:
    return ReadModel(float(per.dac_delta), float(per.inp_bound) if per.dac_bits else 0.0, float(per.w_noise),
                     float(per.out_noise), float(per.adc_delta), float(per.out_bound))


def relax(cb: Crossbars, sub: SubstrateConfig, per: PeripheralConfig, x: np.ndarray, ids: np.ndarray
          ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The kernel's free phase with the twin's signature: (states per layer, steps, outputs)."""
    from neurohw.substrates.analog import twin

    net = layers(cb)
    states, steps = relax_kernel(np.ascontiguousarray(x, dtype=np.float64), np.asarray(ids, dtype=np.int64), net,
                                 dynamics(cb, sub), read_model(per), int(sub.seed), SOURCES)
    s = [states[:, net.offsets[i] : net.offsets[i + 1]] for i in range(len(cb.sizes))]
    return s, steps, twin.output(cb, per, sub.seed, np.asarray(ids), s, sub.max_steps)

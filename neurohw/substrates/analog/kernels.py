"""Numba kernels of the analog substrate (model.py eq. analog, eq. read): one sample per thread.

Each function here has a twin in twin.py that computes the same numbers with numpy; tests assert
that kernel and twin agree. numba is imported here only, so `import neurohw` stays light.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.typed import List

from neurohw.substrates.analog.model import INTEGRATORS, Crossbars, PeripheralConfig, SubstrateConfig

from neurohw.substrates.analog.rng import C1, C2, GOLDEN, INV53, S8, S11, S27, S30, S31, TAG_TAIL, TAG_WEDGE
from neurohw.substrates.analog.rng import ZIG_D, ZIG_F, ZIG_K, ZIG_MASK, ZIG_R, ZIG_SIGN_MASK, ZIG_WS
from neurohw.substrates.analog.rng import ONE as U1
from neurohw.substrates.analog.rng import TWO as U2

TWO_PI = 2.0 * np.pi
# the Ziggurat tables are global arrays, frozen into the compiled code as constants: numba's cache
# follows this file only, so a change of rng.py's tables needs this file touched (or the cache cleared)
U_WEDGE, U_TAIL = np.uint64(TAG_WEDGE), np.uint64(TAG_TAIL)


@njit(cache=True, inline="always")
def _mix(z):
    z = z + GOLDEN
    z = (z ^ (z >> S30)) * C1
    z = (z ^ (z >> S27)) * C2
    return z ^ (z >> S31)


@njit(cache=True, inline="always")
def _read_key(seed, sid, step, stage, read, layer):
    """The key of one read, up to the element index (rng.key's first coordinates)."""
    k = _mix(np.uint64(seed))
    k = _mix(k ^ np.uint64(sid))
    k = _mix(k ^ np.uint64(step))
    k = _mix(k ^ np.uint64(stage))
    k = _mix(k ^ np.uint64(read))
    return _mix(k ^ np.uint64(layer))


@njit(cache=True, inline="always")
def _normal_pair(k):
    r = np.sqrt(-2.0 * np.log((np.float64(_mix(k ^ U1) >> S11) + 1.0) * INV53))
    theta = TWO_PI * ((np.float64(_mix(k ^ U2) >> S11) + 1.0) * INV53)
    return r * np.cos(theta), r * np.sin(theta)


@njit(cache=True, inline="always")
def _polar_pair(k):
    """rng.polar_pair: Marsaglia's polar method on the counter stream of key k."""
    a = np.uint64(0)
    while True:
        u = 2.0 * ((np.float64(_mix(k ^ (a + a + U1)) >> S11) + 1.0) * INV53) - 1.0
        v = 2.0 * ((np.float64(_mix(k ^ (a + a + U2)) >> S11) + 1.0) * INV53) - 1.0
        s = u * u + v * v
        if s > 0.0 and s < 1.0:
            f = np.sqrt(-2.0 * np.log(s) / s)
            return u * f, v * f
        a += U1


@njit(cache=True, inline="always")
def _uniform(k):
    return (np.float64(_mix(k) >> S11) + 1.0) * INV53


@njit(cache=True)
def _zig_slow(k):
    """rng.zig_normal from attempt 0, for keys that miss the fast path: the same tags, tables,
    float64 operations in the same order, and libm's exp/log, so the same decisions and bits."""
    h = k
    a = np.uint64(0)
    while True:
        i = h & ZIG_MASK
        j = h >> S11
        x = np.float64(j) * ZIG_WS[h & ZIG_SIGN_MASK]
        if j < ZIG_K[i]:
            return x
        if i == np.uint64(0):  # the tail, entered at most once
            t = np.uint64(0)
            while True:
                e = -np.log(_uniform(k ^ (U_TAIL + t + t))) / ZIG_R
                y = -np.log(_uniform(k ^ (U_TAIL + t + t + U1)))
                if y + y > e * e:
                    z = ZIG_R + e
                    return -z if (h >> S8) & U1 else z
                t += U1
        if _uniform(k ^ (U_WEDGE + a)) * ZIG_D[i] < np.exp(-0.5 * x * x) - ZIG_F[i]:
            return x
        a += U1
        h = _mix(k ^ a)


@njit(cache=True, inline="always")
def _zig_normal(k):
    """rng.zig_normal of one well-mixed key: attempt 0 on k's own bits (layer, sign, 53-bit
    uniform), accepted ≈ 99 % of the time with a table lookup, a product and a compare."""
    j = k >> S11
    if j < ZIG_K[k & ZIG_MASK]:
        return np.float64(j) * ZIG_WS[k & ZIG_SIGN_MASK]
    return _zig_slow(k)


@njit(cache=True, inline="always")
def _quantise(v, delta, bound):
    if bound > 0.0:
        v = min(max(v, -bound), bound)
    if delta > 0.0:
        v = np.rint(v / delta) * delta
    return v


@njit(cache=True, inline="always")
def _rho(act, a):
    if act == 0:
        return np.tanh(a)
    if act == 1:
        return min(max(a, 0.0), 1.0)
    if act == 2:
        return min(max(0.5 * a, 0.0), 1.0)
    if act == 3:  # the logistic of 4a − 2 with one exp, overflow-free (activations._np_sigmoid)
        z = 4.0 * a - 2.0
        if z >= 0.0:
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z)
        return e / (1.0 + e)
    return a


@njit(cache=True)
def _noisy(y, norm, w_max, w_noise, out_noise, adc_delta, out_bound, seed, sid, step, stage, read, layer):
    """Per-read noise, then clipping and the ADC, on the ideal products y (in place)."""
    if w_noise > 0.0 or out_noise > 0.0:
        # weight and output noise are independent Gaussians on the same output: one draw of their
        # combined std; output j takes the Ziggurat normal of its own key (eq. read)
        s_w = w_noise * w_max * norm
        sigma = np.sqrt(s_w * s_w + out_noise * out_noise)
        base = _read_key(seed, sid, step, stage, read, layer)
        for j in range(y.shape[0]):
            y[j] += sigma * _zig_normal(_mix(base ^ np.uint64(j)))
    if adc_delta > 0.0 or out_bound > 0.0:
        for j in range(y.shape[0]):
            y[j] = _quantise(y[j], adc_delta, out_bound)


@njit(cache=True, fastmath=True)
def _matvec(w, v, out):
    """out_j = Σ_k W[j, k] v_k (fastmath: the reduction may be reordered and vectorised)."""
    for j in range(out.shape[0]):
        acc = 0.0
        for k in range(v.shape[0]):
            acc += w[j, k] * v[k]
        out[j] = acc


@njit(cache=True)
def _matvec_t(w, v, out):
    """out_j = Σ_k v_k W[k, j] (row-wise axpy)."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    for k in range(v.shape[0]):
        q = v[k]
        if q != 0.0:
            for j in range(out.shape[0]):
                out[j] += q * w[k, j]


@njit(cache=True)
def _read(w, v, transpose, buf_in, out, dac_delta, inp_bound, w_max, w_noise, out_noise, adc_delta, out_bound,
          seed, sid, step, stage, read, layer):
    """out = R(W, v) (eq. read); buf_in holds the quantised input."""
    m = v.shape[0]
    norm2 = 0.0
    for k in range(m):
        q = _quantise(v[k], dac_delta, inp_bound)
        buf_in[k] = q
        norm2 += q * q
    if transpose:
        _matvec_t(w, buf_in[:m], out)
    else:
        _matvec(w, buf_in[:m], out)
    _noisy(out, np.sqrt(norm2), w_max, w_noise, out_noise, adc_delta, out_bound, seed, sid, step, stage, read, layer)


@njit(cache=True)
def _derivative(fwd, bwd, biases, w_max, alpha, sizes, offsets, act, drive0, x_norm, s, k, u, buf_in, tmp,
                dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed, sid, step, stage):
    """k = ρ(u) − s for every layer; returns max |k|."""
    n = sizes.shape[0]
    gap = 0.0
    for i in range(n):
        a, m = offsets[i], sizes[i]
        ui = u[a : a + m]
        if i == 0:
            for j in range(m):
                ui[j] = drive0[j]
            _noisy(ui, x_norm, w_max[0], w_noise, out_noise, adc_delta, out_bound, seed, sid, step, stage, 0, 0)
        else:
            p = offsets[i - 1]
            _read(fwd[i], s[p : p + sizes[i - 1]], False, buf_in, ui, dac_delta, inp_bound, w_max[i], w_noise, out_noise,
                  adc_delta, out_bound, seed, sid, step, stage, 1, i)
        bi = biases[i]
        ai = alpha[i]
        for j in range(m):
            ui[j] = ai * ui[j] + bi[j]
        if i + 1 < n:
            q = offsets[i + 1]
            t = tmp[:m]
            _read(bwd[i + 1], s[q : q + sizes[i + 1]], True, buf_in, t, dac_delta, inp_bound, w_max[i + 1], w_noise,
                  out_noise, adc_delta, out_bound, seed, sid, step, stage, 2, i + 1)
            a_next = alpha[i + 1]
            for j in range(m):
                ui[j] += a_next * t[j]
        for j in range(m):
            d = _rho(act, ui[j]) - s[a + j]
            k[a + j] = d
            if abs(d) > gap:
                gap = abs(d)
    return gap


@njit(parallel=True, cache=True)
def relax_kernel(x, ids, fwd, bwd, biases, w_max, alpha, sizes, act, integrator, h, max_steps, tol,
                 dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed):
    """Free phase of every sample (prange): returns states (B, Σn), steps (B,)."""
    b_count = x.shape[0]
    n = sizes.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + sizes[i]
    total = offsets[n]
    widest = max(x.shape[1], sizes.max())
    states = np.zeros((b_count, total))
    steps = np.zeros(b_count, dtype=np.int64)
    w0 = fwd[0]
    for b in prange(b_count):
        sid = ids[b]
        buf_in = np.empty(widest)
        tmp = np.empty(widest)
        u = np.empty(total)
        drive0 = np.empty(sizes[0])
        x_norm2 = 0.0
        for kk in range(x.shape[1]):
            q = _quantise(x[b, kk], dac_delta, inp_bound)
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
        for t in range(max_steps):
            gap = _derivative(fwd, bwd, biases, w_max, alpha, sizes, offsets, act, drive0, x_norm, s, k1, u, buf_in, tmp,
                              dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed, sid, t, 0)
            if gap < tol:
                break
            if integrator == 0:
                for j in range(total):
                    s[j] += h * k1[j]
            else:
                for j in range(total):
                    s2[j] = s[j] + 0.5 * h * k1[j]
                _derivative(fwd, bwd, biases, w_max, alpha, sizes, offsets, act, drive0, x_norm, s2, k2, u, buf_in, tmp,
                            dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed, sid, t, 1)
                for j in range(total):
                    s2[j] = s[j] + 0.5 * h * k2[j]
                _derivative(fwd, bwd, biases, w_max, alpha, sizes, offsets, act, drive0, x_norm, s2, k3, u, buf_in, tmp,
                            dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed, sid, t, 2)
                for j in range(total):
                    s2[j] = s[j] + h * k3[j]
                _derivative(fwd, bwd, biases, w_max, alpha, sizes, offsets, act, drive0, x_norm, s2, k4, u, buf_in, tmp,
                            dac_delta, inp_bound, w_noise, out_noise, adc_delta, out_bound, seed, sid, t, 3)
                for j in range(total):
                    s[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j])
            done += 1
        steps[b] = done
        for j in range(total):
            states[b, j] = s[j]
    return states, steps


def relax(cb: Crossbars, sub: SubstrateConfig, per: PeripheralConfig, x: np.ndarray, ids: np.ndarray
          ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The kernel's free phase with the twin's signature: (states per layer, steps, outputs)."""
    from neurohw.substrates.analog import twin

    typed = lambda arrays: List([np.ascontiguousarray(a, dtype=np.float64) for a in arrays])
    sizes = np.asarray(cb.sizes, dtype=np.int64)
    states, steps = relax_kernel(
        np.ascontiguousarray(x, dtype=np.float64), np.asarray(ids, dtype=np.int64), typed(cb.forward), typed(cb.backward),
        typed(cb.biases), np.asarray(cb.w_max, dtype=np.float64), np.asarray(cb.alpha, dtype=np.float64), sizes, cb.act_id, INTEGRATORS[sub.integrator],
        sub.dt_s / sub.tau_s, sub.max_steps, sub.settle_tol, per.dac_delta, per.inp_bound if per.dac_bits else 0.0,
        per.w_noise, per.out_noise, per.adc_delta, per.out_bound, sub.seed,
    )
    bounds = np.cumsum([0, *cb.sizes])
    s = [states[:, bounds[i] : bounds[i + 1]] for i in range(len(cb.sizes))]
    return s, steps, twin.output(cb, per, sub.seed, np.asarray(ids), s, sub.max_steps)

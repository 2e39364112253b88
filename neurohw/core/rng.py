"""A counter-based random number generator shared by the numba kernels and their numpy twins
(the analog substrate's read noise, the pulse trains of the pulsed devices; docs/math.md eq. counter rng).

Every random number is a pure function of a key built from a seed and the coordinates of the draw
(sample, step, layer, element, purpose), through the SplitMix64 finaliser (Steele, Lea & Flood 2014).
So a kernel run in parallel threads, its numpy twin and a rerun on another machine draw bit-identical
numbers, whatever the scheduling. This module is the numpy statement; `rng_kernels.py` holds the same
functions compiled by numba (tested equal).

    key(seed, c_1, …, c_k) = mix(… mix(mix(seed) ⊕ c_1) … ⊕ c_k)
    uniform(k) = ((mix(k) >> 11) + 1) · 2⁻⁵³ ∈ (0, 1]
    normal(k)  = √(−2 ln uniform(k ⊕ 1)) · cos(2π · uniform(k ⊕ 2))        (Box–Muller)
    normal_sin(k) = the same with sin: a second, independent normal from the same key
    polar_pair(k) = (u, v)·√(−2 ln s / s), s = u² + v², for the first attempt a = 0, 1, … with 0 < s < 1,
                    u = 2·uniform(k ⊕ (2a+1)) − 1, v = 2·uniform(k ⊕ (2a+2)) − 1   (Marsaglia's polar method;
                    no trigonometry)
    zig_normal(k) = one standard normal per well-mixed key k (an output of mix, e.g. a key(…)) by
                    the Ziggurat method (Marsaglia & Tsang 2000); the read noise of the crossbar, drawn
                    at every step, uses it. Definition below.

Ziggurat (N = ZIG_LAYERS = 256 layers, f(x) = exp(−x²/2), all in float64):
    tables  r and v solve  v = r·f(r) + ∫_r^∞ f  (base layer: the rectangle [0, r]×[0, f(r)] plus the
            tail) and x_{N−1}·(1 − f(x_{N−1})) = v (the top layer closes at x = 0), where x_0 = v/f(r),
            x_1 = r, f(x_{i+1}) = f(x_i) + v/x_i (layer i ≥ 1: width x_i, heights f(x_i)…f(x_{i+1}), area
            v), x_N = 0; r by bisection at import (_zig_tables). Derived:
            K_i = ⌈2⁵³·x_{i+1}/x_i⌉,  W_{i,s} = (−1)^s·x_i·2⁻⁵³,  F_i = f(x_i),  D_i = f(x_{i+1}) − f(x_i).
    attempt a = 0, 1, …:  h_0 = k,  h_a = mix(k ⊕ a) for a ≥ 1;
            i = h & 255 (layer), s = (h >> 8) & 1 (sign), j = h >> 11 (53-bit uniform): disjoint bits;
            x = j · W_{i,s}   (one float64 product: ±j·x_i·2⁻⁵³)
            j < K_i                                           → return x         (≈ 99 % of draws)
            i = 0                                             → return (−1)^s·tail(k)
            uniform(k ⊕ (2³² + a))·D_i < exp(−0.5·x·x) − F_i  → return x         (wedge accept)
            otherwise                                         → next attempt     (wedge reject)
    tail(k) = r + e for the first t = 0, 1, … with y + y > e·e, where e = −ln(uniform(k ⊕ (2³³ + 2t)))/r,
            y = −ln(uniform(k ⊕ (2³³ + 2t + 1)))   (Marsaglia's exponential method; entered at most once)
    Tags: a (1 ≤ a < 2³²) attempt draws, 2³² + a wedge uniforms, 2³³ + t tail uniforms: all distinct.
    The rare wedge/tail branches use libm's exp and log (math.exp/math.log here, the same calls in the
    numba kernel), so the kernel and this module take the same decisions and return the same bits.
"""

from __future__ import annotations

import math

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
C1 = np.uint64(0xBF58476D1CE4E5B9)
C2 = np.uint64(0x94D049BB133111EB)
S30, S27, S31, S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
ONE, TWO = np.uint64(1), np.uint64(2)
INV53 = 2.0**-53


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of uint64 values (wrapping arithmetic, as in the kernels)."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) + GOLDEN
        z = (z ^ (z >> S30)) * C1
        z = (z ^ (z >> S27)) * C2
        return z ^ (z >> S31)


def key(seed: int, *coords) -> np.ndarray:
    """The key of a draw at integer coordinates (scalars or broadcastable arrays)."""
    k = mix(np.uint64(seed))
    for c in coords:
        k = mix(k ^ np.asarray(c, dtype=np.uint64))
    return k


def uniform(k: np.ndarray) -> np.ndarray:
    return ((mix(k) >> S11).astype(np.float64) + 1.0) * INV53


def normal_pair(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals per key (the cos and sin branches of Box–Muller)."""
    k = np.asarray(k, dtype=np.uint64)
    r = np.sqrt(-2.0 * np.log(uniform(k ^ ONE)))
    theta = 2.0 * np.pi * uniform(k ^ TWO)
    return r * np.cos(theta), r * np.sin(theta)


def normal(k: np.ndarray) -> np.ndarray:
    return normal_pair(k)[0]


def polar_pair(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals per key by Marsaglia's polar method (module doc): the
    accept/reject decisions use no transcendental function, so the kernels take the same attempts."""
    k = np.asarray(k, dtype=np.uint64)
    z1, z2 = np.empty(k.shape), np.empty(k.shape)
    todo = np.ones(k.shape, dtype=bool)
    a = 0
    while todo.any():
        kk = k[todo]
        u = 2.0 * uniform(kk ^ np.uint64(2 * a + 1)) - 1.0
        v = 2.0 * uniform(kk ^ np.uint64(2 * a + 2)) - 1.0
        s_ = u * u + v * v
        ok = (s_ > 0.0) & (s_ < 1.0)
        s_ok = np.where(ok, s_, 0.5)  # rejected draws: any value in (0, 1), discarded below
        f = np.sqrt(-2.0 * np.log(s_ok) / s_ok)
        idx = np.flatnonzero(todo)[ok]
        z1.flat[idx], z2.flat[idx] = (u * f)[ok], (v * f)[ok]
        todo.flat[idx] = False
        a += 1
    return z1, z2


# ------------------------------------------------------------------------------ Ziggurat (module doc)
ZIG_LAYERS = 256
ZIG_MASK, ZIG_SIGN_MASK, S8 = np.uint64(ZIG_LAYERS - 1), np.uint64(2 * ZIG_LAYERS - 1), np.uint64(8)
TAG_WEDGE, TAG_TAIL = 2**32, 2**33  # wedge uniform of attempt a: k ⊕ (2³² + a); tail uniform t: k ⊕ (2³³ + t)


def _zig_staircase(r: float, n: int) -> tuple[float, list[float], float]:
    """The layer edges x_0 … x_{n−1} for base edge r, the common area v, and v minus the top layer's
    area (> 0: r too small, the layers too fat; +inf if the staircase reaches f = 1 early)."""
    f_r = math.exp(-0.5 * r * r)
    v = r * f_r + math.sqrt(0.5 * math.pi) * math.erfc(r / math.sqrt(2.0))
    x = [v / f_r, r]
    for i in range(1, n - 1):
        t = math.expm1(-0.5 * x[i] * x[i]) + v / x[i]  # f(x_{i+1}) − 1, kept accurate near the top
        if t >= 0.0:
            return v, x, math.inf
        x.append(math.sqrt(-2.0 * math.log1p(t)))
    return v, x, v + x[n - 1] * math.expm1(-0.5 * x[n - 1] * x[n - 1])


def _zig_tables(n: int) -> tuple[float, float, np.ndarray]:
    """(r, v, x_0 … x_n) of an n-layer ziggurat: bisection on r until no float64 lies between the
    brackets, keeping the end whose top layer closes best."""
    lo, hi = 1.0, 10.0  # v − top area: > 0 at r = 1 (the staircase closes early), < 0 at r = 10
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _zig_staircase(mid, n)[2] > 0.0:
            lo = mid
        else:
            hi = mid
    r = min((lo, hi), key=lambda c: abs(_zig_staircase(c, n)[2]))
    v, x, _ = _zig_staircase(r, n)
    return r, v, np.array([*x, 0.0])


ZIG_R, ZIG_V, ZIG_X = _zig_tables(ZIG_LAYERS)
ZIG_K = np.array([math.ceil(math.ldexp(ZIG_X[i + 1] / ZIG_X[i], 53)) for i in range(ZIG_LAYERS)], dtype=np.uint64)
ZIG_WS = np.concatenate([ZIG_X[:-1], -ZIG_X[:-1]]) * INV53  # index h & 511: layer + 256·sign
ZIG_F = np.exp(-0.5 * ZIG_X[:-1] ** 2)
ZIG_D = np.array([math.expm1(-0.5 * ZIG_X[i + 1] ** 2) - math.expm1(-0.5 * ZIG_X[i] ** 2) for i in range(ZIG_LAYERS)])


def _libm(fn, a: np.ndarray) -> np.ndarray:
    """fn (math.exp or math.log: the C library's, as the kernels call it) element by element."""
    return np.array([fn(t) for t in a.tolist()], dtype=np.float64)


def _zig_tail(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tail(k) of the module doc (r + e, e ≥ 0 with density ∝ exp(−r·e − e²/2)) and the rejected tries."""
    out = np.empty(k.shape)
    tries = np.zeros(k.shape, dtype=np.int64)
    todo = np.arange(k.size)
    t = 0
    while todo.size:
        kk = k[todo]
        e = -_libm(math.log, uniform(kk ^ np.uint64(TAG_TAIL + 2 * t))) / ZIG_R
        y = -_libm(math.log, uniform(kk ^ np.uint64(TAG_TAIL + 2 * t + 1)))
        ok = y + y > e * e
        out[todo[ok]] = ZIG_R + e[ok]
        tries[todo[ok]] = t
        todo = todo[~ok]
        t += 1
    return out, tries


def zig_paths(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """zig_normal(k) with, per key, the number of rejected attempts and how the last one ended:
    0 fast accept, 1 wedge accept, 2 tail at its first try, 3 tail after rejected tries."""
    k = np.asarray(k, dtype=np.uint64)
    flat = k.ravel()
    z = np.empty(flat.shape)
    rejected = np.zeros(flat.shape, dtype=np.int64)
    how = np.zeros(flat.shape, dtype=np.int8)
    todo = np.arange(flat.size)
    h = flat
    a = 0
    while todo.size:
        i = (h & ZIG_MASK).astype(np.intp)
        j = h >> S11
        x = j.astype(np.float64) * ZIG_WS[(h & ZIG_SIGN_MASK).astype(np.intp)]
        fast = j < ZIG_K[i]
        z[todo[fast]] = x[fast]
        rejected[todo] = a
        tail = ~fast & (i == 0)
        if tail.any():
            e, tries = _zig_tail(flat[todo[tail]])
            z[todo[tail]] = np.where((h[tail] >> S8) & ONE, -e, e)
            how[todo[tail]] = np.where(tries > 0, 3, 2)
        wedge = ~fast & (i != 0)
        idx, x, i = todo[wedge], x[wedge], i[wedge]
        ok = uniform(flat[idx] ^ np.uint64(TAG_WEDGE + a)) * ZIG_D[i] < _libm(math.exp, -0.5 * x * x) - ZIG_F[i]
        z[idx[ok]] = x[ok]
        how[idx[ok]] = 1
        todo = idx[~ok]
        a += 1
        h = mix(flat[todo] ^ np.uint64(a))
    return z.reshape(k.shape), rejected.reshape(k.shape), how.reshape(k.shape)


def zig_normal(k: np.ndarray) -> np.ndarray:
    """One standard normal per well-mixed uint64 key by the Ziggurat method (module doc)."""
    return zig_paths(k)[0]

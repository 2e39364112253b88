"""The counter-based generator of rng.py compiled by numba, for the kernels of the substrates and devices
(analog/kernels.py, devices/pulse_kernels.py). Same names, same float64 operations in the same order,
libm's exp/log in the rare Ziggurat branches: the same bits as rng.py (tested in tests/unit/test_analog.py).

numba is imported here, so only kernel modules import this one. Nothing here is cached on disk by
itself: the Ziggurat tables of rng.py are global arrays frozen into the compiled code as constants, and
numba's cache would not see a change of rng.py. The cached kernels that call these functions pass
`jit.sources_key(rng, rng_kernels, …)`, so that they are recompiled, with these functions, when either
file changes (core/jit.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from neurohw.core.rng import C1, C2, GOLDEN, INV53, S8, S11, S27, S30, S31, TAG_TAIL, TAG_WEDGE
from neurohw.core.rng import ZIG_D, ZIG_F, ZIG_K, ZIG_MASK, ZIG_R, ZIG_SIGN_MASK, ZIG_WS
from neurohw.core.rng import ONE as U1
from neurohw.core.rng import TWO as U2

TWO_PI = 2.0 * np.pi
U_WEDGE, U_TAIL = np.uint64(TAG_WEDGE), np.uint64(TAG_TAIL)


@njit(inline="always")
def mix(z):
    """rng.mix of one uint64."""
    z = z + GOLDEN
    z = (z ^ (z >> S30)) * C1
    z = (z ^ (z >> S27)) * C2
    return z ^ (z >> S31)


@njit(inline="always")
def uniform(k):
    """rng.uniform of one key: ((mix(k) >> 11) + 1)·2⁻⁵³ ∈ (0, 1]."""
    return (np.float64(mix(k) >> S11) + 1.0) * INV53


@njit(inline="always")
def normal_pair(k):
    """rng.normal_pair: the cos and sin branches of Box–Muller on key k."""
    r = np.sqrt(-2.0 * np.log((np.float64(mix(k ^ U1) >> S11) + 1.0) * INV53))
    theta = TWO_PI * ((np.float64(mix(k ^ U2) >> S11) + 1.0) * INV53)
    return r * np.cos(theta), r * np.sin(theta)


@njit(inline="always")
def polar_pair(k):
    """rng.polar_pair: Marsaglia's polar method on the counter stream of key k."""
    a = np.uint64(0)
    while True:
        u = 2.0 * ((np.float64(mix(k ^ (a + a + U1)) >> S11) + 1.0) * INV53) - 1.0
        v = 2.0 * ((np.float64(mix(k ^ (a + a + U2)) >> S11) + 1.0) * INV53) - 1.0
        s = u * u + v * v
        if s > 0.0 and s < 1.0:
            f = np.sqrt(-2.0 * np.log(s) / s)
            return u * f, v * f
        a += U1


@njit
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
                e = -np.log(uniform(k ^ (U_TAIL + t + t))) / ZIG_R
                y = -np.log(uniform(k ^ (U_TAIL + t + t + U1)))
                if y + y > e * e:
                    z = ZIG_R + e
                    return -z if (h >> S8) & U1 else z
                t += U1
        if uniform(k ^ (U_WEDGE + a)) * ZIG_D[i] < np.exp(-0.5 * x * x) - ZIG_F[i]:
            return x
        a += U1
        h = mix(k ^ a)


@njit(inline="always")
def zig_normal(k):
    """rng.zig_normal of one well-mixed key: attempt 0 on k's own bits (layer, sign, 53-bit
    uniform), accepted ≈ 99 % of the time with a table lookup, a product and a compare."""
    j = k >> S11
    if j < ZIG_K[k & ZIG_MASK]:
        return np.float64(j) * ZIG_WS[k & ZIG_SIGN_MASK]
    return _zig_slow(k)

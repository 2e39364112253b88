"""A counter-based random number generator shared by the numba kernels and their numpy twins.

Every random number of the analog substrate is a pure function of a key built from the scenario
seed and the coordinates of the draw (sample, step, layer, element, purpose), through the
SplitMix64 finaliser (Steele, Lea & Flood 2014). So a kernel run in parallel threads, its numpy twin
and a rerun on another machine draw bit-identical numbers, whatever the scheduling.

    key(seed, c_1, …, c_k) = mix(… mix(mix(seed) ⊕ c_1) … ⊕ c_k)
    uniform(k) = ((mix(k) >> 11) + 1) · 2⁻⁵³ ∈ (0, 1]
    normal(k)  = √(−2 ln uniform(k ⊕ 1)) · cos(2π · uniform(k ⊕ 2))        (Box–Muller)
    normal_sin(k) = the same with sin: a second, independent normal from the same key
    polar_pair(k) = (u, v)·√(−2 ln s / s), s = u² + v², for the first attempt a = 0, 1, … with 0 < s < 1,
                    u = 2·uniform(k ⊕ (2a+1)) − 1, v = 2·uniform(k ⊕ (2a+2)) − 1   (Marsaglia's polar method;
                    no trigonometry: the read noise of the crossbar, drawn at every step, uses it)
"""

from __future__ import annotations

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

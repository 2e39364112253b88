"""A counter-based random number generator shared by the numba kernels and their numpy twins.

Every random number of the analog substrate is a pure function of a key built from the scenario
seed and the coordinates of the draw (sample, step, layer, element, purpose), through the
SplitMix64 finaliser (Steele, Lea & Flood 2014). So a kernel run in parallel threads, its numpy twin
and a rerun on another machine draw bit-identical numbers, whatever the scheduling.

    key(seed, c_1, …, c_k) = mix(… mix(mix(seed) ⊕ c_1) … ⊕ c_k)
    uniform(k) = ((mix(k) >> 11) + 1) · 2⁻⁵³ ∈ (0, 1]
    normal(k)  = √(−2 ln uniform(k ⊕ 1)) · cos(2π · uniform(k ⊕ 2))        (Box–Muller)
    normal_sin(k) = the same with sin: a second, independent normal from the same key
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

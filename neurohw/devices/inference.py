"""Inference noise of programmed conductances: PCM-like programming noise, power-law drift, 1/f
read noise accumulated up to the time of inference, and global drift compensation
(docs/math.md eq. pcm; the statistical model of Nandakumar et al. 2019 / Joshi et al. 2020, with
the coefficients published in aihwkit's PCM inference documentation).

All conductances in µS; ĝ = g_T/g_max is the normalised target. Every draw comes from the numpy
Generator passed in (seeded by the scenario), per device and fixed for the whole evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neurohw.errors import ConfigError

MODELS = ("none", "pcm")


@dataclass(frozen=True)
class NoiseConfig:
    model: str = field(default="none", metadata={"doc": "none | pcm (PCM-like programming noise, drift, read noise)"})
    t_inference_s: float = field(default=1.0, metadata={"doc": "time of inference after programming, s (≥ t0_s)"})
    drift_compensation: bool = field(default=True, metadata={"doc": "global drift compensation per layer"})
    prog_coeff: tuple[float, ...] = field(
        default=(0.26348, 1.9650, -1.1731), metadata={"doc": "c0, c1, c2 of σ_prog = c0 + c1·ĝ + c2·ĝ², µS"}
    )
    t0_s: float = field(default=20.0, metadata={"doc": "time of the last programming pulse's read, t_c, s"})
    t_read_s: float = field(default=250e-9, metadata={"doc": "read pulse width, s"})
    g_max_uS: float = field(default=25.0, metadata={"doc": "g_max of the fits (normalises ĝ), µS"})
    drift: bool = field(default=True, metadata={"doc": "apply drift"})
    read_noise: bool = field(default=True, metadata={"doc": "apply accumulated 1/f read noise"})

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"noise.model = '{self.model}' is not valid; valid: {', '.join(MODELS)}")
        if len(self.prog_coeff) != 3:
            raise ConfigError(f"noise.prog_coeff needs three coefficients c0, c1, c2, got {self.prog_coeff}")
        for key in ("t0_s", "t_read_s", "g_max_uS"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"noise.{key} must be > 0, got {getattr(self, key)}")
        if self.t_inference_s < self.t0_s and self.model != "none":
            raise ConfigError(f"noise.t_inference_s = {self.t_inference_s} s is before noise.t0_s = {self.t0_s} s")


def prog_sigma_uS(g_hat: np.ndarray, coeff: tuple[float, ...]) -> np.ndarray:
    c0, c1, c2 = coeff
    return np.maximum(c0 + c1 * g_hat + c2 * g_hat**2, 0.0)


def drift_nu_stats(g_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the drift exponent ν as functions of ĝ (the published fits)."""
    lg = np.log(np.maximum(g_hat, 1e-12))
    mu = np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045)
    return mu, sd


def read_noise_q(g_hat: np.ndarray) -> np.ndarray:
    return np.minimum(0.0088 / np.maximum(g_hat, 1e-12) ** 0.65, 0.2)


def pcm_conductances(g_target: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(g at programming time t0, g at t_inference) for target conductances g_target (µS)."""
    g_hat = np.clip(g_target / cfg.g_max_uS, 0.0, 1.0)
    g_prog = np.maximum(g_target + prog_sigma_uS(g_hat, cfg.prog_coeff) * rng.standard_normal(g_target.shape), 0.0)
    g_t = g_prog
    if cfg.drift:
        mu, sd = drift_nu_stats(g_hat)
        nu = np.maximum(mu + sd * rng.standard_normal(g_target.shape), 0.0)
        g_t = g_prog * (cfg.t_inference_s / cfg.t0_s) ** (-nu)
    if cfg.read_noise:
        t, tr = cfg.t_inference_s, cfg.t_read_s
        sigma = g_t * read_noise_q(g_hat) * np.sqrt(np.log((t + tr) / (2.0 * tr)))
        g_t = np.maximum(g_t + sigma * rng.standard_normal(g_target.shape), 0.0)
    return g_prog, g_t

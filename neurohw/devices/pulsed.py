"""Pulsed-update resistive devices with aihwkit's parameter names (docs/math.md §12, eq. pulse).

A crossbar of pulsed devices stores one weight per cross-point. Device-to-device (d2d) parameters are
drawn once at construction (`PulsedArray(config, shape, rng)`); cycle-to-cycle (c2c) noise is drawn
per pulse. One pulse in direction d = +1 (up) or −1 (down) at cross-point ij:

    w ← clip(w + d·Δ^d_ij·f^d(w)·(1 + dw_min_std·ξ), b^min_ij, b^max_ij)

with the step sizes and bounds of the d2d draw (aihwkit's PulsedDevice)

    Δ⁺ = dw_min·(g + min(up_down, 0) + r),  Δ⁻ = dw_min·(g − max(up_down, 0) − r),
    g = 1 + dw_min_dtod·ξ,  r = up_down_dtod·ξ,  b^max = w_max·(1 + w_max_dtod·ξ),  b^min = w_min·(1 + w_min_dtod·ξ)

and the law's step shape f^d(w):

* constant_step: f = 1
* linear_step:   f^± = 1 − γ^±·w/w_ref^±, γ^± = |gamma_± + gamma_±_dtod·ξ|, w_ref^± = w_max, w_min (mean bounds)
* soft_bounds:   f^+ = 1 − w/b^max_ij, f^- = 1 − w/b^min_ij
* exp_step:      z = 2a·w/(b^max − b^min) + b, f^+ = max(1 − A_up·e^{γ_up z}, 0), f^- = max(1 − A_down·e^{−γ_down z}, 0)
* pow_step:      f^+ = ((b^max − w)/R)^{γ⁺}, f^- = ((w − b^min)/R)^{γ⁻}, R = b^max − b^min

Stuck devices (probability corrupt_devices_prob) get b^min = b^max = a value drawn uniformly in
±corrupt_devices_range and zero steps. The weight read by the forward pass is the stored weight
plus write noise write_noise_std·dw_min·ξ, redrawn whenever a device is pulsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurohw.config import check_choice, check_positive
from neurohw.config import doc_field as _f
from neurohw.errors import ConfigError

LAWS = ("constant_step", "linear_step", "soft_bounds", "exp_step", "pow_step")
LAW_IDS = {name: i for i, name in enumerate(LAWS)}


@dataclass(frozen=True)
class PulsedDeviceConfig:
    law: str = _f("constant_step", "constant_step | linear_step | soft_bounds | exp_step | pow_step")
    dw_min: float = _f(0.001, "mean weight change of one pulse")
    dw_min_dtod: float = _f(0.3, "d2d spread of the step, relative")
    dw_min_std: float = _f(0.3, "c2c noise of every pulse, relative (multiplicative)")
    up_down: float = _f(0.0, "systematic up/down asymmetry, in units of dw_min (one-sided)")
    up_down_dtod: float = _f(0.01, "d2d spread of the asymmetry, in units of dw_min")
    w_max: float = _f(0.6, "mean upper bound")
    w_min: float = _f(-0.6, "mean lower bound")
    w_max_dtod: float = _f(0.3, "d2d spread of the upper bound, relative")
    w_min_dtod: float = _f(0.3, "d2d spread of the lower bound, relative")
    write_noise_std: float = _f(0.0, "write noise of the read weight, in units of dw_min, redrawn when pulsed")
    corrupt_devices_prob: float = _f(0.0, "probability that a device is stuck")
    corrupt_devices_range: float = _f(0.1, "stuck devices hold a value uniform in ±range")
    gamma_up: float = _f(0.0, "linear_step: slope of the up step; exp_step: γ_up (12.44625 if left 0)")
    gamma_down: float = _f(0.0, "linear_step: slope of the down step; exp_step: γ_down (12.78785 if left 0)")
    gamma_up_dtod: float = _f(0.05, "linear_step: absolute d2d spread of gamma_up")
    gamma_down_dtod: float = _f(0.05, "linear_step: absolute d2d spread of gamma_down")
    A_up: float = _f(0.00081, "exp_step: A_up")
    A_down: float = _f(0.36833, "exp_step: A_down")
    a: float = _f(0.244, "exp_step: a")
    b: float = _f(0.2425, "exp_step: b")
    pow_gamma: float = _f(1.0, "pow_step: exponent")
    pow_gamma_dtod: float = _f(0.1, "pow_step: d2d spread of the exponent, relative")
    pow_up_down: float = _f(0.0, "pow_step: up/down asymmetry of the exponent")
    pow_up_down_dtod: float = _f(0.0, "pow_step: d2d spread of that asymmetry")

    def __post_init__(self) -> None:
        check_choice("pulsed.law", self.law, LAWS)
        check_positive("pulsed.dw_min", self.dw_min)
        if not self.w_min <= 0 <= self.w_max or self.w_min == self.w_max:
            raise ConfigError(f"pulsed.w_min ≤ 0 ≤ pulsed.w_max is required (and w_min < w_max), got {self.w_min}, {self.w_max}")
        for key in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_max_dtod", "w_min_dtod", "write_noise_std",
                    "corrupt_devices_range", "gamma_up_dtod", "gamma_down_dtod", "pow_gamma_dtod", "pow_up_down_dtod"):
            if getattr(self, key) < 0:
                raise ConfigError(f"pulsed.{key} must be ≥ 0, got {getattr(self, key)}")
        if not 0 <= self.corrupt_devices_prob <= 1:
            raise ConfigError(f"pulsed.corrupt_devices_prob must lie in [0, 1], got {self.corrupt_devices_prob}")

    @property
    def n_states(self) -> float:
        """Number of distinguishable states: (w_max − w_min)/dw_min."""
        return (self.w_max - self.w_min) / self.dw_min


class PulsedArray:
    """One crossbar of pulsed devices: d2d parameters, stored weights, and the pulse law."""

    def __init__(self, config: PulsedDeviceConfig, shape: tuple[int, int], rng: np.random.Generator):
        c, self.config, self.shape = config, config, tuple(shape)
        n = lambda: rng.standard_normal(shape)
        self.b_max = c.w_max * (1.0 + c.w_max_dtod * n())
        self.b_min = c.w_min * (1.0 + c.w_min_dtod * n())
        gain = 1.0 + c.dw_min_dtod * n()
        r = c.up_down_dtod * n()
        self.step_up = np.abs(c.dw_min * (gain + min(c.up_down, 0.0) + r))
        self.step_down = np.abs(c.dw_min * (gain - max(c.up_down, 0.0) - r))
        swap = self.b_min > self.b_max
        self.b_min, self.b_max = np.where(swap, self.b_max, self.b_min), np.where(swap, self.b_min, self.b_max)
        self.b_max, self.b_min = np.abs(self.b_max), -np.abs(self.b_min)
        # law parameters (per device where aihwkit draws them per device)
        self.law = LAW_IDS[c.law]
        self.gamma_up = np.zeros(shape)
        self.gamma_down = np.zeros(shape)
        if c.law == "linear_step":
            self.gamma_up = np.abs(c.gamma_up + c.gamma_up_dtod * n())
            self.gamma_down = np.abs(c.gamma_down + c.gamma_down_dtod * n())
        elif c.law == "exp_step":
            self.gamma_up = np.full(shape, c.gamma_up or 12.44625)
            self.gamma_down = np.full(shape, c.gamma_down or 12.78785)
        elif c.law == "pow_step":
            g2 = 1.0 + c.pow_gamma_dtod * n()
            r2 = c.pow_up_down_dtod * n()
            self.gamma_up = np.abs(c.pow_gamma * (g2 + min(c.pow_up_down, 0.0) + r2))
            self.gamma_down = np.abs(c.pow_gamma * (g2 - max(c.pow_up_down, 0.0) - r2))
        self.stuck = rng.random(shape) < c.corrupt_devices_prob
        if self.stuck.any():
            v = rng.uniform(-c.corrupt_devices_range, c.corrupt_devices_range, shape)
            v = np.clip(v, self.b_min, self.b_max)
            self.b_max = np.where(self.stuck, v, self.b_max)
            self.b_min = np.where(self.stuck, v, self.b_min)
            self.step_up = np.where(self.stuck, 0.0, self.step_up)
            self.step_down = np.where(self.stuck, 0.0, self.step_down)
        self.w = np.zeros(shape)
        self.write_noise = np.zeros(shape)  # the visible weight is w + write_noise (redrawn when pulsed)

    @property
    def granularity(self) -> float:
        """The weight change of a typical pulse (aihwkit's calcWeightGranularity)."""
        c = self.config
        if c.law == "pow_step":
            return c.dw_min * 0.5**c.pow_gamma
        if c.law == "exp_step":
            g = float(np.mean(self.step_down)) * max(1.0 - c.A_down * np.exp(-(c.gamma_down or 12.78785) * c.b), 0.0)
            return g if g > 0 else c.dw_min
        return c.dw_min

    def set_weights(self, w: np.ndarray) -> None:
        """Program target weights (clipped to each device's bounds; stuck devices keep their value)."""
        self.w = np.clip(np.asarray(w, dtype=np.float64), self.b_min, self.b_max)

    def shape_factor(self, w: np.ndarray, up: bool) -> np.ndarray:
        """f^±(w) of the device law (module doc)."""
        c = self.config
        law = self.config.law
        if law == "constant_step":
            return np.ones_like(w)
        if law == "linear_step":
            return 1.0 - self.gamma_up * w / c.w_max if up else 1.0 - self.gamma_down * w / c.w_min
        if law == "soft_bounds":
            with np.errstate(divide="ignore", invalid="ignore"):
                f = 1.0 - w / self.b_max if up else 1.0 - w / self.b_min
            return np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        span = self.b_max - self.b_min
        if law == "exp_step":
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(span > 0, 2.0 * c.a * w / np.where(span > 0, span, 1.0) + c.b, 0.0)
            f = 1.0 - c.A_up * np.exp(self.gamma_up * z) if up else 1.0 - c.A_down * np.exp(-self.gamma_down * z)
            return np.where(span > 0, np.maximum(f, 0.0), 0.0)
        safe = np.where(span > 0, span, 1.0)
        base = (self.b_max - w) / safe if up else (w - self.b_min) / safe
        return np.where(span > 0, np.maximum(base, 0.0) ** (self.gamma_up if up else self.gamma_down), 0.0)

    def pulse(self, counts: np.ndarray, up: np.ndarray, rng: np.random.Generator) -> None:
        """Apply counts[i, j] pulses in direction up[i, j] (True: up) to each device, one at a time."""
        counts = np.asarray(counts, dtype=np.int64)
        for p in range(int(counts.max(initial=0))):
            active = counts > p
            xi = rng.standard_normal(self.shape)
            step = np.where(up, self.step_up, -self.step_down)
            f = np.where(up, self.shape_factor(self.w, True), self.shape_factor(self.w, False))
            new = np.clip(self.w + step * f * (1.0 + self.config.dw_min_std * xi), self.b_min, self.b_max)
            self.w = np.where(active, new, self.w)
        c = self.config
        if c.write_noise_std > 0:
            touched = counts > 0
            fresh = c.write_noise_std * c.dw_min * rng.standard_normal(self.shape)
            self.write_noise = np.where(touched, fresh, self.write_noise)

    def read_weights(self) -> np.ndarray:
        """The weights the forward pass sees: stored weights plus their current write noise."""
        return self.w + self.write_noise


@dataclass(frozen=True)
class UpdateConfig:
    desired_bl: int = _f(31, "longest stochastic pulse train per update (aihwkit desired_bl)")
    update_management: bool = _f(True, "balance the x and d pulse probabilities (aihwkit update_management)")
    update_bl_management: bool = _f(True, "shorten the train when the update is small (aihwkit update_bl_management)")

    def __post_init__(self) -> None:
        if self.desired_bl < 1:
            raise ConfigError(f"update.desired_bl must be ≥ 1, got {self.desired_bl}")


def pulse_counts(x: np.ndarray, d: np.ndarray, lr: float, granularity: float, cfg: UpdateConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coincidence counts of aihwkit's stochastic compressed pulse trains for the update
    W ← W − lr·d xᵀ (docs/math.md eq. pulse trains): (counts n_ij, up_ij). E[n_ij] = lr·|d_i x_j|/g."""
    x, d = np.asarray(x, dtype=np.float64), np.asarray(d, dtype=np.float64)
    shape = (d.shape[0], x.shape[0])
    xm, dm = float(np.abs(x).max(initial=0.0)), float(np.abs(d).max(initial=0.0))
    if lr == 0 or xm == 0 or dm == 0:
        return np.zeros(shape, np.int64), np.zeros(shape, bool)
    eta = abs(lr)
    k = eta * xm * dm / granularity
    bl = min(int(np.ceil(k)), cfg.desired_bl) if cfg.update_bl_management else cfg.desired_bl
    bl = max(bl, 1)
    a = b = np.sqrt(eta / (granularity * bl))
    if cfg.update_management or cfg.update_bl_management:
        d_eff = dm * (cfg.desired_bl / k if k > cfg.desired_bl else 1.0)
        a, b = a * np.sqrt(xm / d_eff), b * np.sqrt(d_eff / xm)
    p_x = np.minimum(1.0, b * np.abs(x))  # a row of x-side probabilities (columns j)
    p_d = np.minimum(1.0, a * np.abs(d))  # rows i
    fire_x = rng.random((bl, x.shape[0])) < p_x
    fire_d = rng.random((bl, d.shape[0])) < p_d
    counts = fire_d.T.astype(np.int64) @ fire_x.astype(np.int64)  # coincidences per cross-point
    up = (np.sign(lr) * np.sign(d)[:, None] * np.sign(x)[None, :]) < 0  # W − lr·d xᵀ: s > 0 is down
    return counts, up

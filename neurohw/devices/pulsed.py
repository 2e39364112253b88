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

Each law is one entry of the registry PULSE_LAWS, which holds all its forms (numpy, the pulse kernel's
scalar form, its d2d draw, its granularity); the valid names (`LAWS`) and the kernel's indices (`LAW_IDS`)
derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from neurohw.config import check_choice, check_positive
from neurohw.config import doc_field as _f
from neurohw.core.registry import Registry
from neurohw.errors import ConfigError

EXP_GAMMA_UP, EXP_GAMMA_DOWN = 12.44625, 12.78785  # exp_step's γ_up, γ_down when the card leaves them 0 (aihwkit)


class LawParams(NamedTuple):
    """The scalars of a law's step shape, as the pulse kernel passes them (`PulsedDeviceConfig.law_params`)."""

    law: int  # LAW_IDS
    w_max: float
    w_min: float
    A_up: float
    A_down: float
    a: float
    b: float
    dw_min_std: float
    write_noise: float  # write_noise_std·dw_min


@dataclass(frozen=True)
class PulseLaw:
    """One device law, every form of it in one place (a new law is one entry of PULSE_LAWS):

    * `factor(array, w, up)`: f^±(w) of the module doc for a whole array (numpy; the twin and PulsedArray);
    * `kernel((up, w, b_min, b_max, gamma_up, gamma_down, p))`: the same for one device, a plain Python
      function of one tuple that numba compiles into the pulse kernel (`p`: LawParams);
    * `gammas(config, shape, draw)`: the law's per-device (γ⁺, γ⁻), drawing with `draw()` (one standard
      normal per device and call, in the order of the d2d draws) or None (zeros);
    * `granularity(array)`: the weight change of a typical pulse, or None (dw_min).
    """

    name: str
    factor: Callable[["PulsedArray", np.ndarray, bool], np.ndarray]
    kernel: Callable[[tuple], float]
    gammas: Callable | None = None
    granularity: Callable[["PulsedArray"], float] | None = None


def _constant_factor(array, w, up):
    return np.ones_like(w)


def _constant_kernel(args):
    return 1.0


def _linear_factor(array, w, up):
    c = array.config
    return 1.0 - array.gamma_up * w / c.w_max if up else 1.0 - array.gamma_down * w / c.w_min


def _linear_kernel(args):
    up, w, bmin, bmax, gu, gd, p = args
    return 1.0 - gu * w / p.w_max if up else 1.0 - gd * w / p.w_min


def _linear_gammas(c, shape, draw):
    return np.abs(c.gamma_up + c.gamma_up_dtod * draw()), np.abs(c.gamma_down + c.gamma_down_dtod * draw())


def _soft_factor(array, w, up):
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 1.0 - w / array.b_max if up else 1.0 - w / array.b_min
    return np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)


def _soft_kernel(args):
    up, w, bmin, bmax, gu, gd, p = args
    if up:
        return 1.0 - w / bmax if bmax != 0.0 else 0.0
    return 1.0 - w / bmin if bmin != 0.0 else 0.0


def _exp_factor(array, w, up):
    c = array.config
    span = array.b_max - array.b_min
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(span > 0, 2.0 * c.a * w / np.where(span > 0, span, 1.0) + c.b, 0.0)
    f = 1.0 - c.A_up * np.exp(array.gamma_up * z) if up else 1.0 - c.A_down * np.exp(-array.gamma_down * z)
    return np.where(span > 0, np.maximum(f, 0.0), 0.0)


def _exp_kernel(args):
    up, w, bmin, bmax, gu, gd, p = args
    span = bmax - bmin
    if span <= 0.0:
        return 0.0
    z = 2.0 * p.a * w / span + p.b
    f = 1.0 - p.A_up * np.exp(gu * z) if up else 1.0 - p.A_down * np.exp(-gd * z)
    return max(f, 0.0)


def _exp_gammas(c, shape, draw):
    return np.full(shape, c.gamma_up or EXP_GAMMA_UP), np.full(shape, c.gamma_down or EXP_GAMMA_DOWN)


def _exp_granularity(array) -> float:
    c = array.config
    g = float(np.mean(array.step_down)) * max(1.0 - c.A_down * np.exp(-(c.gamma_down or EXP_GAMMA_DOWN) * c.b), 0.0)
    return g if g > 0 else c.dw_min


def _pow_factor(array, w, up):
    span = array.b_max - array.b_min
    safe = np.where(span > 0, span, 1.0)
    base = (array.b_max - w) / safe if up else (w - array.b_min) / safe
    return np.where(span > 0, np.maximum(base, 0.0) ** (array.gamma_up if up else array.gamma_down), 0.0)


def _pow_kernel(args):
    up, w, bmin, bmax, gu, gd, p = args
    span = bmax - bmin
    if span <= 0.0:
        return 0.0
    base = (bmax - w) / span if up else (w - bmin) / span
    return max(base, 0.0) ** (gu if up else gd)


def _pow_gammas(c, shape, draw):
    g2 = 1.0 + c.pow_gamma_dtod * draw()
    r2 = c.pow_up_down_dtod * draw()
    return (np.abs(c.pow_gamma * (g2 + min(c.pow_up_down, 0.0) + r2)),
            np.abs(c.pow_gamma * (g2 - max(c.pow_up_down, 0.0) - r2)))


PULSE_LAWS: Registry[PulseLaw] = Registry("pulse law")
for _law in (
    PulseLaw("constant_step", _constant_factor, _constant_kernel),
    PulseLaw("linear_step", _linear_factor, _linear_kernel, _linear_gammas),
    PulseLaw("soft_bounds", _soft_factor, _soft_kernel),
    PulseLaw("exp_step", _exp_factor, _exp_kernel, _exp_gammas, _exp_granularity),
    PulseLaw("pow_step", _pow_factor, _pow_kernel, _pow_gammas, lambda array: array.config.dw_min * 0.5**array.config.pow_gamma),
):
    PULSE_LAWS.register(_law.name, _law)

LAWS = tuple(PULSE_LAWS)
LAW_IDS = {name: i for i, name in enumerate(LAWS)}  # the pulse kernel's index of each law


@dataclass(frozen=True)
class PulsedDeviceConfig:
    law: str = _f("constant_step", " | ".join(LAWS))
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

    def law_params(self) -> LawParams:
        return LawParams(LAW_IDS[self.law], float(self.w_max), float(self.w_min), float(self.A_up), float(self.A_down),
                         float(self.a), float(self.b), float(self.dw_min_std), float(self.write_noise_std * self.dw_min))


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
        law = PULSE_LAWS.get(c.law, "pulsed.law")
        if law.gammas is None:
            self.gamma_up, self.gamma_down = np.zeros(shape), np.zeros(shape)
        else:
            self.gamma_up, self.gamma_down = law.gammas(c, shape, n)
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
        law = PULSE_LAWS.get(self.config.law)
        return self.config.dw_min if law.granularity is None else law.granularity(self)

    def set_weights(self, w: np.ndarray) -> None:
        """Program target weights (clipped to each device's bounds; stuck devices keep their value)."""
        self.w = np.clip(np.asarray(w, dtype=np.float64), self.b_min, self.b_max)

    def shape_factor(self, w: np.ndarray, up: bool) -> np.ndarray:
        """f^±(w) of the device law (module doc)."""
        return PULSE_LAWS.get(self.config.law).factor(self, w, up)

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

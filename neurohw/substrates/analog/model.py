"""The analog crossbar model: scenario configuration and the arrays a kernel needs.

Continuous-time leaky-integrator neurons (docs/math.md eq. analog) whose every matrix-vector
product is a crossbar read through DAC, read noise and ADC (eq. read), with noise from the
counter-based generator (eq. counter rng, rng.py). Scenario cards (sims/*.toml) hold the tables
[substrate], [peripherals] and optionally [device] (a mapping profile, eq. map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurohw.config import apply_overrides, build_dataclass, check_choice, check_positive, read_toml, valid_keys
from neurohw.config import doc_field as _f
from neurohw.core.activations import ACTIVATIONS, form, with_form
from neurohw.devices.inference import NoiseConfig, pcm_conductances
from neurohw.devices.mapping import DeviceProfile, map_spec
from neurohw.errors import ConfigError
from neurohw.spec import NetworkSpec

# the kernels' index of each activation that has a kernel form, in registry order (kernels.py dispatches on it)
ACTIVATION_IDS = {name: i for i, name in enumerate(with_form("kernel"))}
INTEGRATORS = {"euler": 0, "rk4": 1}


@dataclass(frozen=True)
class SubstrateConfig:
    kind: str = _f("analog", "analog | torch")
    integrator: str = _f("euler", "euler | rk4")
    tau_s: float = _f(1e-6, "neuron time constant τ, s")
    dt_s: float = _f(1e-7, "integration step, s (≤ τ for euler, ≤ 2τ for rk4)")
    t_max_s: float = _f(1e-4, "longest simulated free phase, s")
    settle_tol: float = _f(1e-6, "a sample has settled when max|ρ(u) − s| < settle_tol")
    batch_size: int = _f(256, "samples per kernel call")
    seed: int = _f(0, "seed of every noise draw")

    def __post_init__(self) -> None:
        check_choice("substrate.kind", self.kind, ("analog", "torch"))
        check_choice("substrate.integrator", self.integrator, tuple(INTEGRATORS))
        for key in ("tau_s", "dt_s", "t_max_s", "settle_tol"):
            check_positive(f"substrate.{key}", getattr(self, key))
        limit = 1.0 if self.integrator == "euler" else 2.0
        if self.dt_s > limit * self.tau_s:
            raise ConfigError(
                f"substrate.dt_s = {self.dt_s:g} s is too large for a stable {self.integrator} integration of "
                f"τ = {self.tau_s:g} s: use dt_s ≤ {limit:g}·tau_s"
            )
        if self.batch_size < 1:
            raise ConfigError(f"substrate.batch_size must be ≥ 1, got {self.batch_size}")

    @property
    def max_steps(self) -> int:
        return max(1, int(math.floor(self.t_max_s / self.dt_s * (1.0 + 1e-12))))


@dataclass(frozen=True)
class PeripheralConfig:
    dac_bits: int = _f(0, "input DAC resolution, bits (0: ideal)")
    adc_bits: int = _f(0, "output ADC resolution, bits (0: ideal)")
    inp_bound: float = _f(1.0, "inputs are clipped to ±inp_bound before the DAC")
    out_bound: float = _f(0.0, "outputs are clipped to ±out_bound before the ADC (0: no clipping)")
    w_noise: float = _f(0.0, "per-read weight noise std, relative to max|W| (aihwkit w_noise)")
    out_noise: float = _f(0.0, "additive output noise std per read (aihwkit out_noise)")
    ir_drop: float = _f(0.0, "wire resistance per cross-point segment × g_max (0: no IR drop; first-order model, eq. irdrop)")

    def __post_init__(self) -> None:
        for key in ("dac_bits", "adc_bits"):
            v = getattr(self, key)
            if v < 0 or v == 1 or v > 24:
                raise ConfigError(f"peripherals.{key} must be 0 (ideal) or 2 … 24, got {v}")
        for key in ("inp_bound", "out_bound", "w_noise", "out_noise", "ir_drop"):
            check_positive(f"peripherals.{key}", getattr(self, key), zero_ok=True)
        if self.dac_bits and not self.inp_bound > 0:
            raise ConfigError("peripherals.inp_bound must be > 0 with a DAC")
        if self.adc_bits and not self.out_bound > 0:
            raise ConfigError("peripherals.out_bound must be > 0 with an ADC (the ADC's full scale, e.g. "
                              "peripherals.out_bound=8 for the 784-512-10 MNIST nets, docs/results.md §4)")

    @property
    def dac_delta(self) -> float:
        return 2.0 * self.inp_bound / (2**self.dac_bits - 2) if self.dac_bits else 0.0

    @property
    def adc_delta(self) -> float:
        return 2.0 * self.out_bound / (2**self.adc_bits - 2) if self.adc_bits else 0.0


@dataclass(frozen=True)
class Scenario:
    substrate: SubstrateConfig = field(default_factory=SubstrateConfig)
    peripherals: PeripheralConfig = field(default_factory=PeripheralConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    device: DeviceProfile | None = None  # map the file's weights with this profile (None: use the file's)


def load_scenario(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """A scenario card (sims/*.toml: [substrate], [peripherals], optional [device]) with overrides."""
    table = read_toml(path, "scenario card") if path is not None else {}
    keys = [k for k in valid_keys(Scenario) if k != "device"] + [f"device.{k}" for k in DeviceProfile.__dataclass_fields__]
    try:
        table = apply_overrides(table, list(overrides), keys=keys)
        device = table.pop("device", None)
        scenario = build_dataclass(Scenario, table, "", keys)
        if device is not None:
            profile = build_dataclass(DeviceProfile, device, "device.", keys)
            scenario = Scenario(scenario.substrate, scenario.peripherals, scenario.noise, profile)
        return scenario
    except ConfigError as e:
        where = f" in '{path}'" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None


@dataclass
class Crossbars:
    """What the kernels read: per dynamic layer the forward and feedback matrices (float64, as
    programmed: (G₊ − G₋)/σ_g), biases, and the constants of the read model."""

    forward: list[np.ndarray]  # W_i, (n_{i+1}, n_i), as programmed (after inference noise, if any)
    backward: list[np.ndarray]  # the matrix read transposed for the feedback into layer i (W_i or W^b_i)
    biases: list[np.ndarray]
    w_max: list[float]  # max|W_i| (scale of the per-read weight noise)
    readout: np.ndarray | None  # CE readout (10, n_L) or None
    readout_bias: np.ndarray | None
    readout_w_max: float
    sizes: list[int]  # state sizes n_1 … n_L
    alpha: list[float]  # drift-compensation factor applied to every read of layer i's crossbar
    readout_alpha: float
    act_id: int
    nudge_outside: bool


def _programmed(ls, noise: NoiseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(W at inference, W^b at inference, drift-compensation α) of one layer (eq. map, eq. pcm)."""
    if noise.model == "none":
        return ls.weight, ls.weight_backward, 1.0
    c = ls.conductance
    if c is None:
        raise ConfigError("noise.model = 'pcm' needs conductances: export with --device or give the scenario a [device] table")

    def at_inference(g_plus: np.ndarray, g_minus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (p0, pt), (m0, mt) = pcm_conductances(g_plus, noise, rng), pcm_conductances(g_minus, noise, rng)
        return (p0 - m0) / c.scale_uS_per_unit, (pt - mt) / c.scale_uS_per_unit

    w0, wt = at_inference(c.g_plus_uS.astype(np.float64), c.g_minus_uS.astype(np.float64))
    alpha = 1.0
    if noise.drift_compensation:  # ratio of the summed |outputs| for an all-ones input, at t0 and now
        alpha = float(np.abs(w0.sum(1)).sum() / max(np.abs(wt.sum(1)).sum(), 1e-300))
    wb = None
    if ls.weight_backward is not None:  # the untied feedback crossbar: same mapping scale, same physics
        span = c.g_max_uS - c.g_min_uS
        g = np.asarray(ls.weight_backward, dtype=np.float64) * c.scale_uS_per_unit
        _, wb = at_inference(c.g_min_uS + np.clip(g, 0.0, span), c.g_min_uS + np.clip(-g, 0.0, span))
    return wt, wb, alpha


def crossbars_from_spec(spec: NetworkSpec, profile: DeviceProfile | None = None, noise: NoiseConfig | None = None,
                        seed: int = 0, ir_drop: float = 0.0) -> Crossbars:
    """The crossbars of a dense spec; with `profile` its weights are (re)mapped onto devices first,
    with `noise` the programmed conductances get inference noise (generator seeded by `seed`), with
    `ir_drop` > 0 the reads see first-order IR drop (eq. irdrop; γ = g_min/g_max of the mapping, 0 for
    a file without conductances)."""
    noise = noise or NoiseConfig()
    if any(ls.type != "dense" for ls in spec.layers):
        raise ConfigError("the analog substrate runs dense (fc) networks; this file has conv2d layers")
    form(spec.activation, "kernel")  # refuses an activation without a kernel form, naming those with one
    if spec.activation not in ACTIVATION_IDS:
        raise ConfigError(f"activation '{spec.activation}' was registered after neurohw.substrates.analog was imported; the "
                          "kernels' table of activations is built at import: register it before")
    if profile is not None:
        spec = map_spec(spec, profile)
    rng = np.random.default_rng(seed)
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)
    programmed = [_programmed(ls, noise, rng) for ls in spec.layers]
    dyn = [p for ls, p in zip(spec.layers, programmed) if not ls.readout]
    ro = [(ls, p) for ls, p in zip(spec.layers, programmed) if ls.readout]
    forward = [f64(w) for w, _, _ in dyn]
    backward = [f64(w if wb is None else wb) for w, wb, _ in dyn]
    cb = Crossbars(
        forward=forward,
        backward=backward,
        biases=[f64(ls.bias) for ls in spec.layers if not ls.readout],
        w_max=[float(np.abs(w).max(initial=0.0)) for w in forward],
        readout=f64(ro[0][1][0]) if ro else None,
        readout_bias=f64(ro[0][0].bias) if ro else None,
        readout_w_max=float(np.abs(ro[0][1][0]).max(initial=0.0)) if ro else 0.0,
        sizes=[w.shape[0] for w in forward],
        alpha=[a for _, _, a in dyn],
        readout_alpha=ro[0][1][2] if ro else 1.0,
        act_id=ACTIVATION_IDS[spec.activation],
        nudge_outside=spec.nudge == "outside",
    )
    if ir_drop > 0.0:
        from neurohw.substrates.analog.irdrop import with_ir_drop

        c = next((ls.conductance for ls in spec.layers if ls.conductance is not None), None)
        cb = with_ir_drop(cb, ir_drop, c.g_min_uS / c.g_max_uS if c is not None else 0.0)
    return cb


def activation_numpy(act_id: int, a: np.ndarray) -> np.ndarray:
    name = {v: k for k, v in ACTIVATION_IDS.items()}[act_id]
    return ACTIVATIONS.get(name).numpy(a)

"""Scenario cards of the Brian2 substrate (sims/brian2_*.toml, sims/nir_cubalif.toml): tables [brian2],
[lif], [cubalif] and [nir].

Pure dataclasses (no brian2 import), so a card is checked before any simulation starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from neurohw.config import apply_overrides, build_dataclass, check_choice, check_positive, read_toml, valid_keys
from neurohw.config import doc_field as _f
from neurohw.errors import ConfigError

MODELS = ("rate", "lif", "cubalif")
TARGETS = ("auto", "numpy", "cython", "cpp_standalone")
INPUTS = ("rate", "poisson")


@dataclass(frozen=True)
class Brian2Config:
    model: str = _f("rate", "rate (leaky-integrator rate neurons) | lif (leaky integrate-and-fire, rate-coded) | "
                    "cubalif (NIR's current-based LIF, linear input current, one recurrent population)")
    target: str = _f("auto", "code generation: auto (cython when a C++ compiler works, else numpy) | numpy | cython | cpp_standalone")
    tau_ms: float = _f(10.0, "rate: neuron time constant τ; lif: time constant τ_s of the exponential synapses and rate traces, ms")
    dt_ms: float = _f(1.0, "integration step, ms (rate: ≤ τ for a stable Euler step)")
    t_free_ms: float = _f(200.0, "duration of the free phase, ms")
    t_nudge_ms: float = _f(100.0, "duration of the nudged phase, ms")
    batch_size: int = _f(50, "samples simulated side by side in one brian2.Network (replicated groups)")
    seed: int = _f(0, "seed of brian2's generator (Poisson input); batch k uses seed + k")

    def __post_init__(self) -> None:
        check_choice("brian2.model", self.model, MODELS)
        check_choice("brian2.target", self.target, TARGETS)
        for key in ("tau_ms", "dt_ms", "t_free_ms", "t_nudge_ms", "batch_size"):
            check_positive(f"brian2.{key}", getattr(self, key))
        if self.model == "rate" and self.dt_ms > self.tau_ms:
            raise ConfigError(
                f"brian2.dt_ms = {self.dt_ms:g} ms is too large for a stable Euler integration of τ = {self.tau_ms:g} ms: "
                "use dt_ms ≤ tau_ms"
            )
        if self.t_free_ms < self.dt_ms:
            raise ConfigError(f"brian2.t_free_ms = {self.t_free_ms:g} ms is shorter than one step (dt_ms = {self.dt_ms:g})")

    @property
    def free_steps(self) -> int:
        return int(round(self.t_free_ms / self.dt_ms))

    @property
    def nudge_steps(self) -> int:
        return int(round(self.t_nudge_ms / self.dt_ms))


@dataclass(frozen=True)
class LIFConfig:
    tau_m_ms: float = _f(10.0, "membrane time constant τ_m, ms")
    t_ref_ms: float = _f(1.0, "absolute refractory period, ms")
    v_rest_mV: float = _f(-65.0, "resting potential, mV (also the reset)")
    v_th_mV: float = _f(-50.0, "firing threshold, mV")
    nu_max_Hz: float = _f(400.0, "firing rate that encodes ρ = 1 (must stay below 1/t_ref)")
    rate_floor: float = _f(1e-3, "ρ is floored at this fraction of nu_max (ρ = 0 would need exactly the rheobase)")
    input: str = _f("rate", "rate: the static input drives layer 1 as a constant current | poisson: pixels fire Poisson spikes")
    nu_in_Hz: float = _f(200.0, "poisson: rate of a pixel of intensity 1")
    read_ms: float = _f(100.0, "outputs are the spike counts of the last read_ms of the free phase")
    tau_plast_ms: float = _f(100.0, "C-EP plasticity: time constant of the activity traces whose product drives dw/dt, ms")

    def __post_init__(self) -> None:
        for key in ("tau_m_ms", "t_ref_ms", "nu_max_Hz", "nu_in_Hz", "read_ms", "rate_floor", "tau_plast_ms"):
            check_positive(f"lif.{key}", getattr(self, key))
        if not self.v_th_mV > self.v_rest_mV:
            raise ConfigError(f"lif.v_th_mV ({self.v_th_mV:g}) must exceed lif.v_rest_mV ({self.v_rest_mV:g})")
        if self.nu_max_Hz * self.t_ref_ms * 1e-3 >= 1.0:
            raise ConfigError(
                f"lif.nu_max_Hz = {self.nu_max_Hz:g} Hz cannot be reached with lif.t_ref_ms = {self.t_ref_ms:g} ms: "
                f"need nu_max_Hz < 1/t_ref = {1e3 / self.t_ref_ms:g} Hz"
            )
        if not self.rate_floor < 1.0:
            raise ConfigError(f"lif.rate_floor must be < 1, got {self.rate_floor}")
        check_choice("lif.input", self.input, INPUTS)


@dataclass(frozen=True)
class CubaLIFConfig:
    """The NIR-expressible spiking scenario (docs/math.md eq. cubalif, nir-map): NIR CubaLIF neurons, v_leak = 0,
    reset to 0, no refractory period, threshold 1, the layered net as one recurrent population."""

    tau_syn_ms: float = _f(5.0, "synaptic time constant τ_syn, ms")
    tau_mem_ms: float = _f(20.0, "membrane time constant τ_mem, ms")
    nu_max_Hz: float = _f(500.0, "firing rate that encodes the state s = 1")
    slope_hidden: float = _f(0.2, "hidden layers: ds/du of the firing rate far above the rheobase (s = ν/nu_max)")
    onset_hidden: float = _f(-0.2, "hidden layers: the pre-activation u at which a neuron starts firing (its rheobase)")
    slope_output: float = _f(0.8, "last dynamic layer (the output of an mse net, the layer under a CE readout): as slope_hidden")
    onset_output: float = _f(-0.1, "last dynamic layer: as onset_hidden")
    read_ms: float = _f(100.0, "outputs are the time average of the graph's output over the last read_ms of the free phase")
    spike_area_ms: float = _f(0.1, "a spike is a unit pulse one step Δ long (area Δ) in the signal a NIR Affine/Linear node "
                                   "reads: 0.1 ms is the step snnTorch and Norse read NIR files with")

    def __post_init__(self) -> None:
        for key in ("tau_syn_ms", "tau_mem_ms", "nu_max_Hz", "slope_hidden", "slope_output", "read_ms", "spike_area_ms"):
            check_positive(f"cubalif.{key}", getattr(self, key))
        for key in ("onset_hidden", "onset_output"):
            v = getattr(self, key)
            if not math.isfinite(v):
                raise ConfigError(f"cubalif.{key} must be finite, got {v}")


@dataclass(frozen=True)
class NIRInputConfig:
    dataset: str = _f("mnist", "a NIR file neurohw did not write: the dataset whose test images it is run on")
    input_scale: float = _f(255.0, "a NIR file neurohw did not write: its input is image/input_scale, flattened in C order")

    def __post_init__(self) -> None:
        from neurohw.choices import DATASETS

        named = tuple(d for d in DATASETS if d not in ("arrays", "folder"))
        check_choice("nir.dataset", self.dataset, named)
        check_positive("nir.input_scale", self.input_scale)


@dataclass(frozen=True)
class Brian2Scenario:
    brian2: Brian2Config = field(default_factory=Brian2Config)
    lif: LIFConfig = field(default_factory=LIFConfig)
    cubalif: CubaLIFConfig = field(default_factory=CubaLIFConfig)
    nir: NIRInputConfig = field(default_factory=NIRInputConfig)

    def __post_init__(self) -> None:
        b, lif = self.brian2, self.lif
        if b.model == "lif":
            if lif.read_ms > b.t_free_ms:
                raise ConfigError(f"lif.read_ms = {lif.read_ms:g} ms exceeds brian2.t_free_ms = {b.t_free_ms:g} ms")
            if b.dt_ms > 0.2 * lif.tau_m_ms or b.dt_ms > lif.t_ref_ms:
                raise ConfigError(
                    f"brian2.dt_ms = {b.dt_ms:g} ms is too coarse for LIF neurons with τ_m = {lif.tau_m_ms:g} ms and "
                    f"t_ref = {lif.t_ref_ms:g} ms: use dt_ms ≤ min(0.2·tau_m_ms, t_ref_ms)"
                )
        if b.model == "cubalif":
            c = self.cubalif
            if c.read_ms > b.t_free_ms:
                raise ConfigError(f"cubalif.read_ms = {c.read_ms:g} ms exceeds brian2.t_free_ms = {b.t_free_ms:g} ms")
            if b.dt_ms > 0.2 * min(c.tau_syn_ms, c.tau_mem_ms):
                raise ConfigError(
                    f"brian2.dt_ms = {b.dt_ms:g} ms is too coarse for CubaLIF neurons with τ_syn = {c.tau_syn_ms:g} ms and "
                    f"τ_mem = {c.tau_mem_ms:g} ms: use dt_ms ≤ 0.2·min(tau_syn_ms, tau_mem_ms)"
                )


def load_brian2_scenario(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Brian2Scenario:
    """A Brian2 scenario card with `key=value` overrides (e.g. brian2.target=numpy), every key checked."""
    table = read_toml(path, "scenario card") if path is not None else {}
    keys = valid_keys(Brian2Scenario)
    try:
        table = apply_overrides(table, list(overrides), keys=keys)
        return build_dataclass(Brian2Scenario, table, "", keys)
    except ConfigError as e:
        where = f" in '{path}'" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None

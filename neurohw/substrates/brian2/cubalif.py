"""The NIR-expressible spiking scenario of the Brian2 substrate (`brian2.model = "cubalif"`, docs/math.md
eq. cubalif, nir-map, nir-spike).

A network is held at NIR's level (`CubaLIFNet`, float64, NIR's parameter names and time in seconds):

    input → Affine (w_in, b_in) → CubaLIF population of N neurons ⇄ recurrent Affine (w_rec, b_rec) → [readout Affine] → output

`from_spec` writes the layered EP network of a NetworkSpec as that one recurrent population: every dynamic
layer is a block of the population, the input drive W₀x + b as input current, Wₙ and Wₙᵀ (or C-VF's
untied feedback) as off-diagonal blocks of w_rec, and each layer's rheobase placed by a constant current
(b_rec). `to_layers` inverts it exactly (float64 factors, float32 arrays). `simulate` runs a CubaLIFNet
— written by neurohw or read from another tool's NIR file — as one `brian2.NeuronGroup` and returns the
time average of the graph's output over the last `cubalif.read_ms` of the free phase.

This module needs numpy only until a simulation is built (brian2 is imported by `simulate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from neurohw.errors import ConfigError
from neurohw.spec import NetworkSpec
from neurohw.substrates.brian2.config import Brian2Scenario, CubaLIFConfig

THRESHOLD = 1.0  # v_threshold of every neuron (NIR voltage units): the one threshold of the population
NEURON_PARAMS = ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")  # NIR CubaLIF's, per neuron


@dataclass(eq=False)
class CubaLIFNet:
    """One recurrent population of NIR CubaLIF neurons with its input and readout (float64, SI seconds).

    NIR CubaLIF: τ_syn dI/dt = −I + w_in·S,  τ_mem dv/dt = (v_leak − v) + r·I,  spike when v > v_threshold,
    then v = v_reset; S = affine(x) + b_rec + w_rec·spikes(t), spikes(t) unit pulses of area `spike_area_s`."""

    affine_w: np.ndarray  # (N, n_in) input Affine weight
    affine_b: np.ndarray  # (N,) input Affine bias
    w_rec: np.ndarray  # (N, N) recurrent Affine/Linear weight (zeros: no recurrence)
    b_rec: np.ndarray  # (N,) recurrent Affine bias (zeros for a Linear node)
    tau_syn: np.ndarray  # (N,) s
    tau_mem: np.ndarray  # (N,) s
    r: np.ndarray  # (N,)
    v_leak: np.ndarray  # (N,)
    v_threshold: np.ndarray  # (N,)
    v_reset: np.ndarray  # (N,)
    w_in: np.ndarray  # (N,) NIR's input current weight (elementwise)
    readout_w: np.ndarray | None = None  # (n_out, N) readout Affine/Linear of the spike signal; None: the spikes themselves
    readout_b: np.ndarray | None = None  # (n_out,)

    def __post_init__(self) -> None:
        n = self.w_rec.shape[0]
        if self.w_rec.shape != (n, n):
            raise ConfigError(f"the recurrent weight must be square, got {self.w_rec.shape}")
        if self.affine_w.ndim != 2 or self.affine_w.shape[0] != n:
            raise ConfigError(f"the input Affine maps to {self.affine_w.shape[0] if self.affine_w.ndim == 2 else '?'} "
                              f"neurons, the population has {n}")
        for name in ("affine_b", "b_rec", *NEURON_PARAMS):
            if getattr(self, name).shape != (n,):
                raise ConfigError(f"CubaLIF parameter {name} has shape {getattr(self, name).shape}, expected ({n},)")
        for name in ("tau_syn", "tau_mem"):
            if not np.all(getattr(self, name) > 0):
                raise ConfigError(f"CubaLIF {name} must be > 0 for every neuron")
        if self.readout_w is not None:
            if self.readout_w.ndim != 2 or self.readout_w.shape[1] != n:
                raise ConfigError(f"the readout has shape {self.readout_w.shape}, expected (n_out, {n})")
            if self.readout_b is None:
                self.readout_b = np.zeros(self.readout_w.shape[0])
            if self.readout_b.shape != (self.readout_w.shape[0],):
                raise ConfigError(f"the readout bias has shape {self.readout_b.shape}, expected ({self.readout_w.shape[0]},)")

    @property
    def n(self) -> int:
        return self.w_rec.shape[0]

    @property
    def n_in(self) -> int:
        return self.affine_w.shape[1]

    @property
    def n_out(self) -> int:
        return self.n if self.readout_w is None else self.readout_w.shape[0]

    def outputs(self, counts: np.ndarray, read_s: float, spike_area_s: float) -> np.ndarray:
        """The time average over the read window of the graph's output, from the spike counts (B, N) in it."""
        signal = counts * (spike_area_s / read_s)  # the time average of the spike signal (unit pulses of area Δ)
        return signal if self.readout_w is None else signal @ self.readout_w.T + self.readout_b

    def arrays(self) -> dict[str, np.ndarray | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------
# the layered EP net as one population (docs/math.md eq. nir-map)


@dataclass(frozen=True)
class LayerScale:
    """The factors of one dynamic layer (block) of the population, float64 (eq. nir-map)."""

    size: int
    k: float  # Affine-output units (current before w_in) per unit of pre-activation u
    offset: float  # c: the constant current b_rec = k·c places the rheobase at u = onset
    f: float  # recurrent factor k/(Δ·ν_max): w_rec block = f·W


def layer_scales(sizes: list[int], cfg: CubaLIFConfig) -> list[LayerScale]:
    """k_l, c_l, f_l of each dynamic layer (the last one takes the `*_output` slope and onset)."""
    dt_ref = cfg.spike_area_ms * 1e-3
    tau_syn, tau_mem = cfg.tau_syn_ms * 1e-3, cfg.tau_mem_ms * 1e-3
    r, w_in = tau_mem / dt_ref, tau_syn / dt_ref
    m = cfg.nu_max_Hz * tau_mem
    out = []
    for i, size in enumerate(sizes):
        last = i == len(sizes) - 1
        slope, onset = (cfg.slope_output, cfg.onset_output) if last else (cfg.slope_hidden, cfg.onset_hidden)
        g = slope * m  # V∞/θ per unit u
        k = g * THRESHOLD / (r * w_in)
        out.append(LayerScale(size, k, 1.0 / g - onset, k / (dt_ref * cfg.nu_max_Hz)))
    return out


def check_exportable(spec: NetworkSpec) -> None:
    """ConfigError saying what NIR cannot carry and which scenario to use (docs/math.md §15, eq. nir-map)."""
    from neurohw.substrates.brian2.network import RATE_CODABLE

    for i, ls in enumerate(spec.layers):
        if ls.type != "dense":
            raise ConfigError(
                f"NIR export takes dense (fc) networks; layer {i:02d} is {ls.type}"
                + (f" with {ls.pool} pooling inside the dynamics" if ls.pool != "none" else "")
                + ": EP's feedback through a convolution is its transpose (conv_transpose2d, and max-unpooling by the "
                "forward pass's arg-max), which NIR has no node for. Simulate it with `neurohw simulate FILE.h5 "
                "--substrate analog` (or torch)"
            )
    if spec.device is not None or any(ls.conductance is not None for ls in spec.layers):
        model = spec.device.model if spec.device is not None else "conductances"
        raise ConfigError(
            f"this file carries a device mapping ({model}): NIR's Affine/Linear nodes hold ideal weights and have no "
            "place for conductances, programmed levels or stuck devices. Export the run without --device, or simulate "
            "the mapping with `neurohw simulate FILE.h5 --substrate analog`"
        )
    if spec.activation not in RATE_CODABLE:
        raise ConfigError(
            f"activation '{spec.activation}' takes negative values, which a firing rate cannot encode; the NIR scenario "
            f"runs nets whose ρ lies in [0, 1] ({', '.join(RATE_CODABLE)})"
        )


def from_spec(spec: NetworkSpec, cfg: CubaLIFConfig) -> tuple[CubaLIFNet, list[LayerScale]]:
    """The CubaLIFNet of a dense spec under the scenario `cfg`, and the factors of its blocks (eq. nir-map)."""
    check_exportable(spec)
    dyn = [ls for ls in spec.layers if not ls.readout]
    ro = [ls for ls in spec.layers if ls.readout]
    sizes = [ls.out_shape[0] for ls in dyn]
    scales = layer_scales(sizes, cfg)
    n, n_in = sum(sizes), int(np.prod(spec.input_shape))
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    blk = [slice(start[i], start[i + 1]) for i in range(len(sizes))]
    affine_w, affine_b = np.zeros((n, n_in)), np.zeros(n)
    w_rec, b_rec = np.zeros((n, n)), np.zeros(n)
    affine_w[blk[0]] = scales[0].k * dyn[0].weight.astype(np.float64)
    for l, (ls, sc) in enumerate(zip(dyn, scales)):
        affine_b[blk[l]] = sc.k * ls.bias.astype(np.float64)
        b_rec[blk[l]] = sc.k * sc.offset
        if l > 0:  # W_{l-1→l} into block l, its transpose (or C-VF's feedback) into block l−1
            w = ls.weight.astype(np.float64)
            back = w if ls.weight_backward is None else ls.weight_backward.astype(np.float64)
            w_rec[blk[l], blk[l - 1]] = sc.f * w
            w_rec[blk[l - 1], blk[l]] = scales[l - 1].f * back.T
    dt_ref = cfg.spike_area_ms * 1e-3
    tau_syn, tau_mem = cfg.tau_syn_ms * 1e-3, cfg.tau_mem_ms * 1e-3
    ones = np.ones(n)
    nu_scale = 1.0 / (dt_ref * cfg.nu_max_Hz)  # spike signal → s (time average of unit pulses ÷ Δ·ν_max)
    if ro:
        readout_w = np.zeros((ro[0].out_shape[0], n))
        readout_w[:, blk[-1]] = nu_scale * ro[0].weight.astype(np.float64)
        readout_b = ro[0].bias.astype(np.float64)
    else:
        readout_w = np.zeros((sizes[-1], n))
        readout_w[:, blk[-1]] = nu_scale * np.eye(sizes[-1])
        readout_b = np.zeros(sizes[-1])
    net = CubaLIFNet(
        affine_w, affine_b, w_rec, b_rec, tau_syn * ones, tau_mem * ones, (tau_mem / dt_ref) * ones, 0.0 * ones,
        THRESHOLD * ones, 0.0 * ones, (tau_syn / dt_ref) * ones, readout_w, readout_b,
    )
    return net, scales


def to_layers(net: CubaLIFNet, scales: list[LayerScale], cfg: CubaLIFConfig, tied: list[bool], readout: bool,
              input_shape: tuple[int, ...]) -> tuple:
    """The dense LayerSpecs of a CubaLIFNet written by `from_spec` (exact inverse: float64 factors, float32 arrays)."""
    from neurohw.spec import LayerSpec

    sizes = [s.size for s in scales]
    if sum(sizes) != net.n:
        raise ConfigError(f"the recorded layer sizes {sizes} do not add up to the population's {net.n} neurons")
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    blk = [slice(start[i], start[i + 1]) for i in range(len(sizes))]
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    layers = []
    prev = int(np.prod(input_shape))
    for l, sc in enumerate(scales):
        if l == 0:
            w = net.affine_w[blk[0]] / sc.k
        else:
            w = net.w_rec[blk[l], blk[l - 1]] / sc.f
        back = None
        if l > 0:
            fb = (net.w_rec[blk[l - 1], blk[l]] / scales[l - 1].f).T
            if tied[l]:
                if not np.array_equal(f32(fb), f32(w)):
                    raise ConfigError(f"block ({l - 1}, {l}) of the recurrent weight is not the transpose of block ({l}, {l - 1}), "
                                      "but the file records tied weights for this layer")
            else:
                back = f32(fb)
        in_shape = tuple(input_shape) if l == 0 else (prev,)
        layers.append(LayerSpec("dense", in_shape, (sc.size,), f32(w), f32(net.affine_b[blk[l]] / sc.k), weight_backward=back))
        prev = sc.size
    if readout:
        nu_scale = 1.0 / (cfg.spike_area_ms * 1e-3 * cfg.nu_max_Hz)
        w = net.readout_w[:, blk[-1]] / nu_scale
        layers.append(LayerSpec("dense", (prev,), (w.shape[0],), f32(w), f32(net.readout_b), readout=True))
    return tuple(layers)


# ---------------------------------------------------------------------------------------------
# simulation


def simulate(net: CubaLIFNet, x: np.ndarray, scenario: Brian2Scenario, target: str, timer: Any = None,
             seed: int | None = None) -> np.ndarray:
    """The time average of the graph's output over the last `cubalif.read_ms` of `brian2.t_free_ms`, for inputs
    x (B, n_in), batch by batch (`brian2.batch_size` samples side by side). `timer` (a Brian2Substrate)
    accumulates wall_build_s and wall_run_s."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != net.n_in:
        raise ConfigError(f"the network's input takes {net.n_in} values per sample, got {x.shape[1]}")
    sc, cfg = scenario.brian2, scenario.cubalif
    outs = [np.zeros((0, net.n_out))]
    for k0 in range(0, len(x), sc.batch_size):
        counts = _simulate_batch(net, x[k0 : k0 + sc.batch_size], scenario, target, timer)
        outs.append(net.outputs(counts, cfg.read_ms * 1e-3, cfg.spike_area_ms * 1e-3))
    return np.concatenate(outs)


def _simulate_batch(net: CubaLIFNet, x: np.ndarray, scenario: Brian2Scenario, target: str, timer: Any) -> np.ndarray:
    """Spike counts (B, N) of one batch in the read window (eq. cubalif)."""
    import brian2 as b2

    from neurohw.errors import SubstrateError
    from neurohw.substrates.brian2.network import _gate, codegen

    sc, cfg = scenario.brian2, scenario.cubalif
    B, n = len(x), net.n
    dt = sc.dt_ms * 1e-3
    t_free = sc.free_steps * dt
    read = cfg.read_ms * 1e-3
    area = cfg.spike_area_ms * 1e-3
    t0 = time.perf_counter()
    with codegen(target):
        ns = {"read_gate": _gate(t_free - read, t_free, dt, t_free)}
        clock = b2.Clock(dt=dt * b2.second)
        eqs = """
        dI/dt = (-I + w_in*S)/tau_syn : 1
        dv/dt = (v_leak - v + r*I)/tau_mem : 1
        S : 1 (constant)
        w_in : 1 (constant)
        r : 1 (constant)
        v_leak : 1 (constant)
        v_th : 1 (constant)
        v_reset : 1 (constant)
        tau_syn : second (constant)
        tau_mem : second (constant)
        count : 1
        """
        g = b2.NeuronGroup(B * n, eqs, threshold="v > v_th", reset="v = v_reset; count += read_gate(t)",
                           method="euler", clock=clock, namespace=ns)
        # the constant part of S: the input Affine of the clamped input and the recurrent Affine's bias
        g.S = (x @ net.affine_w.T + net.affine_b + net.b_rec).ravel()
        tile = lambda a: np.tile(a, B)
        g.w_in, g.r, g.v_leak = tile(net.w_in), tile(net.r), tile(net.v_leak)
        g.v_th, g.v_reset = tile(net.v_threshold), tile(net.v_reset)
        g.tau_syn, g.tau_mem = tile(net.tau_syn) * b2.second, tile(net.tau_mem) * b2.second
        g.v = tile(net.v_leak)
        objects = [g]
        post, pre = np.nonzero(net.w_rec)
        if len(post):
            # a unit pulse of area Δ through w_rec raises I by w_in·w·Δ/τ_syn (eq. nir-spike)
            jump = net.w_rec[post, pre] * area * net.w_in[post] / net.tau_syn[post]
            base = np.repeat(np.arange(B) * n, len(post))
            syn = b2.Synapses(g, g, "w : 1 (constant)", on_pre="I_post += w", clock=clock, namespace=ns)
            syn.connect(i=(base + np.tile(pre, B)).astype(np.int32), j=(base + np.tile(post, B)).astype(np.int32))
            syn.w = np.tile(jump, B)
            objects.append(syn)
        network = b2.Network(*objects)
        t1 = time.perf_counter()
        try:
            network.run(t_free * b2.second, namespace={})
        except Exception as e:
            if target == "numpy":
                raise
            raise SubstrateError(f"brian2 target '{target}' failed to build or run this network: {type(e).__name__}: {e}") from e
        t2 = time.perf_counter()
        counts = np.asarray(g.count[:], dtype=np.float64).reshape(B, n)
    if timer is not None:
        timer.wall_build_s += t1 - t0
        timer.wall_run_s += t2 - t1
    return counts

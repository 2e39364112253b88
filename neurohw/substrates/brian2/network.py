"""A NetworkSpec as an explicit `brian2.Network` (docs/math.md §13): rate or LIF neurons, free and
nudged phases driven by TimedArrays, C-EP as synaptic plasticity. Imports brian2 (only this module does).

Samples are simulated side by side: each NeuronGroup holds B copies of a layer (neuron k of sample b
at index b·n + k) and each Synapses object B block-diagonal copies of a weight matrix, so one
simulation computes a batch. One Synapses object per weight matrix carries both directions of the
symmetric coupling (the forward current into the upper layer and the feedback current into the
lower one), so a plastic weight is one variable, as in Φ.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

_hook = sys.excepthook
import brian2 as b2  # noqa: E402

sys.excepthook = _hook  # brian2 installs its own hook at import; a library must not change the host's

from neurohw.core.activations import ACTIVATIONS, form, with_form
from neurohw.errors import ConfigError
from neurohw.spec import NetworkSpec
from neurohw.substrates.brian2.config import Brian2Scenario

# ρ(u) is the registry's Brian2 expression (core/activations.py, docs/math.md eq. act); the LIF model
# encodes ρ ∈ [0, 1] as a firing rate, so it runs the activations whose image lies in [0, 1]
RATE_CODABLE = tuple(name for name in with_form("brian2")
                     if ACTIVATIONS.get(name).image[0] >= 0.0 and ACTIVATIONS.get(name).image[1] <= 1.0)
COMPILERS = ("c++", "g++", "clang++")


@dataclass
class DenseNet:
    """The dense layers of a spec in float64: dynamic layers 1 … L and the optional CE readout."""

    weights: list[np.ndarray]  # W_i (n_{i+1}, n_i); W_0 maps the input
    backward: list[np.ndarray | None]  # untied feedback matrices (C-VF), same shapes
    biases: list[np.ndarray]
    readout: tuple[np.ndarray, np.ndarray] | None
    activation: str
    nudge_outside: bool
    cost: str

    @property
    def sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights]

    @classmethod
    def from_spec(cls, spec: NetworkSpec) -> "DenseNet":
        for i, ls in enumerate(spec.layers):
            if ls.type != "dense":
                raise ConfigError(
                    f"the brian2 substrate runs dense (fc) networks; layer {i:02d} of this file is {ls.type}"
                )
        form(spec.activation, "brian2")  # refuses an activation without a Brian2 form, naming those with one
        dyn = [ls for ls in spec.layers if not ls.readout]
        ro = [ls for ls in spec.layers if ls.readout]
        return cls(
            [ls.weight.astype(np.float64) for ls in dyn],
            [None if ls.weight_backward is None else ls.weight_backward.astype(np.float64) for ls in dyn],
            [ls.bias.astype(np.float64) for ls in dyn],
            (ro[0].weight.astype(np.float64), ro[0].bias.astype(np.float64)) if ro else None,
            spec.activation, spec.nudge == "outside", spec.cost,
        )

    def scores(self, s_last: np.ndarray) -> np.ndarray:
        """Output scores from the last layer's state: itself (mse) or the linear CE readout."""
        if self.readout is None:
            return s_last
        w, b = self.readout
        return s_last @ w.T + b


# ---------------------------------------------------------------------------------------------
# code-generation targets


def compiler() -> str | None:
    """The C++ compiler Brian2 would use: $CXX, else the first of c++, g++, clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx.split()[0])
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


_TARGET_OK: dict[str, bool] = {}


def _cython_builds() -> bool:
    """Whether a tiny network builds and runs with the cython target (checked once per process)."""
    if "cython" not in _TARGET_OK:
        try:
            if importlib.util.find_spec("Cython") is None:
                raise ImportError("Cython")
            with codegen("cython"):
                g = b2.NeuronGroup(2, "dv/dt = -v/(10*ms) : 1", method="euler", namespace={})
                g.v = 1
                b2.Network(g).run(0.2 * b2.ms, namespace={})
            _TARGET_OK["cython"] = True
        except Exception:  # any build failure means: not usable here
            _TARGET_OK["cython"] = False
    return _TARGET_OK["cython"]


def resolve_target(target: str) -> str:
    """The code-generation target to use; a compiled one needs a working C++ compiler."""
    if target == "auto":
        return "cython" if compiler() is not None and _cython_builds() else "numpy"
    if target in ("cython", "cpp_standalone") and compiler() is None:
        looked = ", ".join((["$CXX"] if os.environ.get("CXX") else []) + list(COMPILERS))
        raise ConfigError(
            f"brian2.target = '{target}' needs a C++ compiler and none was found (looked for {looked} on PATH); "
            "install one or use brian2.target = 'numpy'"
        )
    if target == "cython":
        if importlib.util.find_spec("Cython") is None:
            raise ConfigError("brian2.target = 'cython' needs the Cython package; install it or use brian2.target = 'numpy'")
    return target


_STANDALONE_DIR: list[str] = []


@contextmanager
def codegen(target: str):
    """Objects created inside run with `target`; cpp_standalone builds and runs at `net.run` (one
    project directory per process, so that unchanged files are not recompiled)."""
    if target == "cpp_standalone":
        if not _STANDALONE_DIR:
            _STANDALONE_DIR.append(tempfile.mkdtemp(prefix="neurohw_brian2_"))
        b2.set_device("cpp_standalone", directory=_STANDALONE_DIR[0], build_on_run=True, with_output=False)
        try:
            yield
        finally:
            b2.device.reinit()
            b2.set_device("runtime")
        return
    old = b2.prefs.codegen.target
    b2.prefs.codegen.target = target
    try:
        yield
    finally:
        b2.prefs.codegen.target = old


# ---------------------------------------------------------------------------------------------
# building the network


def _gate(t0: float, t1: float, dt: float, total: float, value: float = 1.0) -> "b2.TimedArray":
    """A TimedArray on the simulation's dt grid: `value` for t0 ≤ t < t1, 0 elsewhere (times in s;
    t1 = inf: to the end and beyond)."""
    n = int(round(total / dt)) + 2
    v = np.zeros(n)
    v[int(round(t0 / dt)) : n if t1 == np.inf else int(round(t1 / dt))] = value
    return b2.TimedArray(v, dt=dt * b2.second)


def _blocks(n_pre: int, n_post: int, n_samples: int, pre_active: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synapse index arrays of block-diagonal all-to-all copies: (i, j, pre, post) with i = b·n_pre +
    pre, j = b·n_post + post, for every sample b and every (active) presynaptic neuron pre."""
    if pre_active is None:
        bb, pre = np.divmod(np.arange(n_samples * n_pre), n_pre)
    else:
        bb, pre = np.nonzero(pre_active)
    post = np.tile(np.arange(n_post), len(pre))
    i = np.repeat(bb * n_pre + pre, n_post)
    j = np.repeat(bb * n_post, n_post) + post
    return i.astype(np.int32), j.astype(np.int32), np.repeat(pre, n_post), post


@dataclass
class Built:
    net: "b2.Network"
    layers: list  # NeuronGroups of the dynamic layers
    synapses: list  # Synapses objects: input → layer 1, layer i → layer i+1
    pre_sizes: list[int]  # presynaptic layer size of each Synapses object
    monitors: dict[str, Any]
    duration: float  # s


def build(net: DenseNet, x: np.ndarray, sc: Brian2Scenario, *, y: np.ndarray | None = None, beta: float = 0.0,
          lrs: list[float] | None = None, record: bool = False, record_output_ms: float = 0.0) -> Built:
    """The brian2.Network of a batch of inputs x (B, n_in): the free phase, then (with y) a nudged
    phase of strength β; with `lrs` (η per weight matrix) the weights follow the C-EP plasticity.
    `record`: traces and spikes of every layer for sample 0; `record_output_ms` > 0: the last layer of
    every sample (rate: its state every record_output_ms; LIF: its spikes)."""
    cfg, lif = sc.brian2, sc.lif
    spiking = cfg.model == "lif"
    if spiking and net.activation not in RATE_CODABLE:
        raise ConfigError(
            f"brian2.model = 'lif' encodes ρ(u) ∈ [0, 1] as a firing rate; activation '{net.activation}' is not "
            f"bounded in [0, 1] (use one of {', '.join(RATE_CODABLE)}) or use brian2.model = 'rate'"
        )
    nudged = y is not None
    plastic = lrs is not None
    if nudged and net.readout is not None:
        raise ConfigError("the brian2 substrate nudges the output layer of cost 'mse' nets; this file has cost 'ce_readout'")
    if plastic and (not nudged or any(wb is not None for wb in net.backward)):
        raise ConfigError("C-EP plasticity needs a nudged phase (targets y) and tied weights (no weight_backward)")
    if plastic and spiking and lif.input == "poisson":
        raise ConfigError("C-EP plasticity with lif.input = 'poisson' is not supported; use lif.input = 'rate'")
    if plastic and len(lrs) != len(net.weights):
        raise ConfigError(f"C-EP plasticity needs one learning rate per weight matrix ({len(net.weights)}), got {len(lrs)}")

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    B, L = x.shape[0], len(net.weights)
    dt = cfg.dt_ms * 1e-3
    t_free = cfg.free_steps * dt
    total = t_free + (cfg.nudge_steps * dt if nudged else 0.0)
    tau = cfg.tau_ms * 1e-3
    ms, second, mV, Hz = b2.ms, b2.second, b2.mV, b2.Hz
    ns: dict[str, Any] = {
        "tau": tau * second, "tau_s": tau * second,
        "beta_t": _gate(t_free, np.inf, dt, total, beta if nudged else 0.0),
        "eta_t": _gate(t_free, np.inf, dt, total, 1.0 if plastic else 0.0),
        "snap": _gate(t_free, t_free + dt, dt, total),
    }
    if spiking:
        read = lif.read_ms * 1e-3
        ns.update({
            "tau_m": lif.tau_m_ms * ms, "t_ref": lif.t_ref_ms * ms, "v_rest": lif.v_rest_mV * mV, "v_th": lif.v_th_mV * mV,
            "nu_max": lif.nu_max_Hz * Hz, "rho_floor": lif.rate_floor, "q": 1.0 / (lif.nu_max_Hz * tau),
            "q_in": 1.0 / (lif.nu_in_Hz * tau), "tau_p": lif.tau_plast_ms * ms,
            "q_p": 1.0 / (lif.nu_max_Hz * lif.tau_plast_ms * 1e-3), "read_free": _gate(t_free - read, t_free, dt, total),
            "read_nudge": _gate(total - read, total, dt, total),
        })
    clock = b2.Clock(dt=dt * second)
    eta_over_beta = [f"{lr / beta!r}" for lr in lrs] if plastic else ["0"] * L  # η_k/β as literals in the equations

    # input: the network input x clamped (rate), or pixel intensities firing Poisson spikes
    poisson = spiking and lif.input == "poisson"
    if poisson:
        if x.min() < 0:
            raise ConfigError("lif.input = 'poisson' needs non-negative network inputs (pixel intensities); this file's "
                              "input preprocessing makes them negative: use lif.input = 'rate'")
        inp = b2.PoissonGroup(x.size, rates=x.ravel() * lif.nu_in_Hz * Hz, clock=clock, namespace={})
    else:
        inp = b2.NeuronGroup(x.size, "s : 1 (constant)", clock=clock, namespace={})
        inp.s = x.ravel()

    groups = []
    for k in range(L):
        last = k == L - 1
        u_terms = ["u_in" if k == 0 else "u_f"] + ([] if last else ["u_b"])
        target = "r" if spiking else "s"
        nout = f" + beta_t(t)*(y - {target})" if last and nudged and net.nudge_outside else ""
        nin = f" + beta_t(t)*(y - {target})" if last and nudged and not net.nudge_outside else ""
        lines = [f"u = {' + '.join(u_terms)} + b{nin} : 1"]
        kb = eta_over_beta[k]
        rho = form(net.activation, "brian2").format(u="u")
        if spiking:
            lines += [
                "dv/dt = (v_inf - v)/tau_m : volt (unless refractory)",
                "v_inf = v_th + (v_th - v_rest)/(exp((1/nu - t_ref)/tau_m) - 1) : volt",
                f"nu = nu_max*clip({rho}{nout}, rho_floor, 1) : Hz",
                "dr/dt = -r/tau_s : 1",
                "count : 1", "count_nudge : 1",
            ]
            if k == 0:
                lines.append("du_in/dt = -u_in/tau_s : 1" if poisson else "u_in : 1")
            else:
                lines.append("du_f/dt = -u_f/tau_s : 1")
            if not last:
                lines.append("du_b/dt = -u_b/tau_s : 1")
            reset = "v = v_rest; r += q; count += read_free(t); count_nudge += read_nudge(t)"
            if plastic:  # the plasticity reads slower traces p of the same spikes (eq. lif-cep)
                lines += ["dp/dt = -p/tau_p : 1", f"db/dt = -{kb}*eta_t(t)*p/tau_p : 1"]
                reset += f"; b += {kb}*eta_t(t)*q_p; p += q_p"
            else:
                lines.append("b : 1")
            g = b2.NeuronGroup(B * net.sizes[k], lines_join(lines, last and nudged), threshold="v > v_th", reset=reset,
                               refractory="t_ref", method="euler", clock=clock, namespace=ns)
            g.v = lif.v_rest_mV * mV
        else:
            lines += [
                "ds/dt = sdot : 1",
                f"sdot = (-s + {rho}{nout})/tau : Hz",
                "s_free : 1",
                "u_in : 1" if k == 0 else "u_f : 1",
            ]
            if not last:
                lines.append("u_b : 1")
            lines.append(f"db/dt = {kb}*eta_t(t)*sdot : 1" if plastic else "b : 1")
            g = b2.NeuronGroup(B * net.sizes[k], lines_join(lines, last and nudged), method="euler", clock=clock, namespace=ns)
        g.b = np.tile(net.biases[k], B)
        if last and nudged:
            g.y = np.asarray(y, dtype=np.float64).reshape(B, -1).ravel()
        if not spiking:  # the state at the end of the free phase (LIF: from the spike counts)
            g.run_regularly("s_free = s*snap(t) + s_free*(1 - snap(t))", when="start")
        groups.append(g)

    synapses = []
    # input → layer 1: only from non-zero inputs (a zero input carries no current and never spikes)
    active = x != 0
    if not active.any():  # all inputs zero: one synapse from a silent input keeps the object well-formed
        active = np.zeros_like(active)
        active[0, 0] = True
    i, j, pre, post = _blocks(x.shape[1], net.sizes[0], B, active)
    k0 = eta_over_beta[0]
    if poisson:
        s_in = b2.Synapses(inp, groups[0], "w : 1", on_pre="u_in_post += w*q_in", clock=clock, namespace=ns)
    elif spiking and plastic:  # d/dt(x p_post) = x·dp_post/dt: the post spikes and the trace decay
        s_in = b2.Synapses(inp, groups[0], f"""dw/dt = -{k0}*eta_t(t)*s_pre*p_post/tau_p : 1 (clock-driven)
                                               u_in_post = w*s_pre : 1 (summed)""",
                           on_post=f"w += {k0}*eta_t(t)*q_p*s_pre", method="euler", clock=clock, namespace=ns)
    elif plastic:
        s_in = b2.Synapses(inp, groups[0], f"""dw/dt = {k0}*eta_t(t)*s_pre*sdot_post : 1 (clock-driven)
                                               u_in_post = w*s_pre : 1 (summed)""",
                           method="euler", clock=clock, namespace=ns, order=-2)
    else:  # the clamped input's current is constant: one summation at t = 0
        s_in = b2.Synapses(inp, groups[0], "w : 1\nu_in_post = w*s_pre : 1 (summed)",
                           dt=(total + dt) * second, namespace=ns)
    s_in.connect(i=i, j=j)
    s_in.w = net.weights[0][post, pre]
    synapses.append(s_in)

    for k in range(1, L):
        w, wb = net.weights[k], net.backward[k]
        n_pre, n_post = net.sizes[k - 1], net.sizes[k]
        fb = "wb" if wb is not None else "w"
        kk = eta_over_beta[k]
        if spiking:
            model = ("w : 1" if not plastic else f"dw/dt = -2*{kk}*eta_t(t)*p_pre*p_post/tau_p : 1 (clock-driven)")
            model += "\nwb : 1" if wb is not None else ""
            on_pre = "u_f_post += w*q" + (f"\nw += {kk}*eta_t(t)*q_p*p_post" if plastic else "")
            on_post = f"u_b_pre += {fb}*q" + (f"\nw += {kk}*eta_t(t)*q_p*p_pre" if plastic else "")
            syn = b2.Synapses(groups[k - 1], groups[k], model, on_pre=on_pre, on_post=on_post, method="euler",
                              clock=clock, namespace=ns)
        else:
            model = ("w : 1" if not plastic else f"dw/dt = {kk}*eta_t(t)*(s_pre*sdot_post + s_post*sdot_pre) : 1 (clock-driven)")
            model += ("\nwb : 1" if wb is not None else "") + f"\nu_f_post = w*s_pre : 1 (summed)\nu_b_pre = {fb}*s_post : 1 (summed)"
            syn = b2.Synapses(groups[k - 1], groups[k], model, method="euler", clock=clock, namespace=ns, order=-2)
        i, j, pre, post = _blocks(n_pre, n_post, B)
        syn.connect(i=i, j=j)
        syn.w = w[post, pre]
        if wb is not None:
            syn.wb = wb[post, pre]
        synapses.append(syn)

    monitors: dict[str, Any] = {}
    if record:  # sample 0: every neuron's trace and spikes of each layer
        for k, g in enumerate(groups):
            n = net.sizes[k]
            monitors[f"state{k}"] = b2.StateMonitor(g, "r" if spiking else "s", record=np.arange(n), clock=clock)
            if spiking:
                monitors[f"spikes{k}"] = b2.SpikeMonitor(g[:n])
    if record_output_ms > 0:
        last = groups[-1]
        if spiking:
            monitors["out_spikes"] = b2.SpikeMonitor(last)
        else:
            monitors["out_state"] = b2.StateMonitor(last, "s", record=True, dt=record_output_ms * ms)
    network = b2.Network(inp, *groups, *synapses, *monitors.values())
    return Built(network, groups, synapses, [x.shape[1], *net.sizes[:-1]], monitors, total)


def lines_join(lines: list[str], with_target: bool) -> str:
    return "\n".join(lines + (["y : 1 (constant)"] if with_target else []))

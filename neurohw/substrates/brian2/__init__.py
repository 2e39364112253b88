"""The bio-realistic substrate: an exported network as an explicit `brian2.Network` (network.py).

* rate model: leaky-integrator rate neurons τ ds/dt = −s + ρ(u) (the analog substrate's dynamics);
* LIF model: leaky integrate-and-fire neurons whose firing rate encodes ρ(u) through the inverse of
  their f–I curve, exponential synapses, optional Poisson input;
* C-EP as plasticity: in the nudged phase every synapse follows dw/dt = (η/β) d(r_pre r_post)/dt;
* cubalif model: NIR's current-based LIF neurons, the layered net as one recurrent population
  (cubalif.py; what `neurohw export --format nir` writes and `neurohw simulate FILE.nir` reads).

`Brian2Substrate(scenario).run(spec, x)` runs the free phase; `.nudged(spec, x, y, lrs=…)` both
phases with optional plasticity. brian2 is imported only when a simulation is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neurohw.errors import ConfigError
from neurohw.spec import NetworkSpec
from neurohw.substrates import Trace
from neurohw.substrates.brian2.config import Brian2Config, Brian2Scenario, LIFConfig, load_brian2_scenario


@dataclass
class NudgedResult:
    """What a nudged simulation returns (per sample, float64)."""

    s_free: list[np.ndarray]  # state of every dynamic layer at the end of the free phase (B, n_k)
    s_nudged: list[np.ndarray]  # … at the end of the nudged phase
    delta_w: list[np.ndarray]  # per weight matrix, the change by plasticity averaged over the batch (n_out, n_in)
    delta_b: list[np.ndarray]  # per layer, the bias change averaged over the batch
    traces: dict[str, Any] = field(default_factory=dict)  # with record=True: times and traces of sample 0


class Brian2Substrate:
    name = "brian2"

    def __init__(self, scenario: Brian2Scenario | None = None):
        self.scenario = scenario or Brian2Scenario()
        self.target: str | None = None  # resolved at the first simulation
        self.wall_build_s = 0.0
        self.wall_run_s = 0.0

    def _target(self) -> str:
        from neurohw.substrates.brian2.network import resolve_target

        if self.target is None:
            self.target = resolve_target(self.scenario.brian2.target)
        return self.target

    def _simulate(self, net, x, report=None, **kw) -> tuple[Any, dict[str, np.ndarray]]:
        """Build and run one batch; returns (Built, the state variables read back). `report(f)`, if
        given, is called with the fraction f of the batch's simulated time done, every second of wall
        time (brian2's run report; the runtime targets only: cpp_standalone runs as one program)."""
        import brian2 as b2

        from neurohw.errors import SubstrateError
        from neurohw.substrates.brian2.network import build, codegen

        target = self._target()
        t0 = time.perf_counter()
        with codegen(target):
            built = build(net, x, self.scenario, **kw)
            t1 = time.perf_counter()
            run_kw = {}
            if report is not None and target != "cpp_standalone":
                run_kw = {"report": lambda elapsed, completed, start, duration: report(float(completed)),
                          "report_period": 1.0 * b2.second}
            try:
                built.net.run(built.duration * b2.second, namespace={}, **run_kw)
            except ConfigError:
                raise
            except Exception as e:
                if target == "numpy":
                    raise
                raise SubstrateError(f"brian2 target '{target}' failed to build or run this network: {type(e).__name__}: {e}") from e
            t2 = time.perf_counter()
            spiking = self.scenario.brian2.model == "lif"
            names = ("count", "count_nudge", "b") if spiking else ("s", "s_free", "b")
            out = {}
            for k, g in enumerate(built.layers):
                states = g.get_states(list(names))
                out.update({f"{n}{k}": np.asarray(states[n], dtype=np.float64) for n in names})
            if kw.get("lrs") is not None:  # the synapses changed: read them back (millions for MNIST inputs)
                for k, syn in enumerate(built.synapses):
                    out[f"w{k}"] = np.array(syn.w[:], dtype=np.float64)
                    out[f"i{k}"] = np.array(syn.i[:], dtype=np.int64)
                    out[f"j{k}"] = np.array(syn.j[:], dtype=np.int64)
            for key, mon in built.monitors.items():
                out[f"t_{key}"] = np.array(mon.t / b2.second)
                if key.startswith(("state", "out_state")):
                    out[key] = np.array(mon.r if spiking and key.startswith("state") else mon.s)
                else:
                    out[key] = np.array(mon.i[:])
        self.wall_build_s += t1 - t0
        self.wall_run_s += t2 - t1
        return built, out

    def _rates(self, out: dict, name: str, k: int, B: int) -> np.ndarray:
        lif = self.scenario.lif
        return out[f"{name}{k}"].reshape(B, -1) / (lif.nu_max_Hz * lif.read_ms * 1e-3)

    def run(self, spec: NetworkSpec, x: np.ndarray, cfg=None, rng=None, progress=None) -> Trace:
        """Free phase of the network inputs `x` (B, n_in); outputs at its end (LIF: spike counts of
        the last `lif.read_ms`), batch by batch. `progress`, if given, is called with the number of
        samples done: after every batch, and within one (a fraction of it) every second of wall time."""
        from neurohw.substrates.brian2.network import DenseNet

        if self.scenario.brian2.model == "cubalif":  # NIR's CubaLIF neurons, one recurrent population (cubalif.py)
            from neurohw.substrates.brian2 import cubalif

            return Trace(self.run_cubalif(cubalif.from_spec(spec, self.scenario.cubalif)[0], x))
        net = DenseNet.from_spec(spec)
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        sc = self.scenario.brian2
        outs = []
        for k0 in range(0, len(x), sc.batch_size):
            xb = x[k0 : k0 + sc.batch_size]
            _seed(sc.seed + k0 // sc.batch_size)
            report = None if progress is None else (lambda f, k0=k0, m=len(xb): progress(k0 + f * m))
            _, out = self._simulate(net, xb, report=report)
            if progress is not None:
                progress(k0 + len(xb))
            L = len(net.weights) - 1
            s_last = self._rates(out, "count", L, len(xb)) if sc.model == "lif" else out[f"s{L}"].reshape(len(xb), -1)
            outs.append(net.scores(s_last))
        return Trace(np.concatenate(outs) if outs else np.zeros((0, spec.layers[-1].out_shape[0])))

    def run_cubalif(self, net, x: np.ndarray) -> np.ndarray:
        """The time-averaged output (B, n_out) of a CubaLIFNet (a NIR graph's population, cubalif.py) for inputs x."""
        from neurohw.substrates.brian2 import cubalif

        if self.scenario.brian2.model != "cubalif":
            raise ConfigError(f"a NIR network runs on brian2.model = 'cubalif' (NIR's CubaLIF neurons), not "
                              f"'{self.scenario.brian2.model}': use --sim sims/nir_cubalif.toml")
        return cubalif.simulate(net, x, self.scenario, self._target(), timer=self)

    def output_trajectory(self, spec: NetworkSpec, x: np.ndarray, every_ms: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """The output scores during the free phase: (times (T,) in s, scores (T, B, n_out)); LIF: spike
        counts over the `lif.read_ms` before each time (times from read_ms on)."""
        from neurohw.substrates.brian2.network import DenseNet

        net = DenseNet.from_spec(spec)
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        sc = self.scenario.brian2
        times, scores = None, []
        for k0 in range(0, len(x), sc.batch_size):
            xb = x[k0 : k0 + sc.batch_size]
            B = len(xb)
            _seed(sc.seed + k0 // sc.batch_size)
            _, out = self._simulate(net, xb, record_output_ms=every_ms)
            n_out = net.sizes[-1]
            if sc.model == "lif":
                lif = self.scenario.lif
                read = lif.read_ms * 1e-3
                t = np.arange(read, sc.free_steps * sc.dt_ms * 1e-3 + 1e-12, every_ms * 1e-3)
                ts, idx = out["t_out_spikes"], out["out_spikes"]
                s = np.zeros((len(t), B * n_out))
                for a, tt in enumerate(t):
                    m = (ts >= tt - read - 1e-12) & (ts < tt - 1e-12)
                    s[a] = np.bincount(idx[m], minlength=B * n_out)
                s /= lif.nu_max_Hz * read
            else:
                t, s = out["t_out_state"], out["out_state"].T
            times = t
            scores.append(np.stack([net.scores(row.reshape(B, n_out)) for row in s]))
        return times, np.concatenate(scores, axis=1)

    def nudged(self, spec: NetworkSpec, x: np.ndarray, y: np.ndarray, *, beta: float | None = None,
               lrs: list[float] | None = None, record: bool = False) -> NudgedResult:
        """Free then nudged phase (β = the file's unless given) of one batch; with `lrs` (η per
        weight matrix) the synapses learn by the C-EP plasticity and the changes are returned."""
        from neurohw.substrates.brian2.network import DenseNet

        net = DenseNet.from_spec(spec)
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        B = len(x)
        beta = float(spec.beta if beta is None else beta)
        if not beta > 0:
            raise ConfigError(f"the nudged phase needs β > 0, got {beta}")
        _seed(self.scenario.brian2.seed)
        built, out = self._simulate(net, x, y=y, beta=beta, lrs=lrs, record=record)
        spiking = self.scenario.brian2.model == "lif"
        L = len(net.weights)
        if spiking:
            s_free = [self._rates(out, "count", k, B) for k in range(L)]
            s_nudged = [self._rates(out, "count_nudge", k, B) for k in range(L)]
        else:
            s_free = [out[f"s_free{k}"].reshape(B, -1) for k in range(L)]
            s_nudged = [out[f"s{k}"].reshape(B, -1) for k in range(L)]
        delta_w = [np.zeros_like(w) for w in net.weights]  # stays zero without plasticity
        delta_b = [(out[f"b{k}"].reshape(B, -1) - net.biases[k]).mean(0) for k in range(L)]
        if lrs is not None:
            for k, (w0, dw) in enumerate(zip(net.weights, delta_w)):
                pre, post = out[f"i{k}"] % built.pre_sizes[k], out[f"j{k}"] % w0.shape[0]
                np.add.at(dw, (post, pre), (out[f"w{k}"] - w0[post, pre]) / B)
        traces = {k: v for k, v in out.items() if k.startswith(("state", "spikes", "t_"))}
        return NudgedResult(s_free, s_nudged, delta_w, delta_b, traces)


def _seed(seed: int) -> None:
    """Seed brian2's generator (Poisson input draws); brian2 offers only this global seed."""
    import brian2 as b2

    b2.seed(int(seed))


__all__ = ["Brian2Config", "Brian2Scenario", "Brian2Substrate", "LIFConfig", "NudgedResult", "load_brian2_scenario"]

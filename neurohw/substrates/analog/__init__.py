"""The analog crossbar substrate: continuous-time leaky-integrator neurons whose every matrix-vector
product is a crossbar read through DAC, ADC, read noise and optionally IR drop (model.py, irdrop.py;
docs/math.md §11).

`AnalogSubstrate(scenario, engine="kernel"|"twin").run(spec, x)` runs the free phase of a dense
network; the numba kernel and its numpy twin compute the same numbers (tested).
"""

from __future__ import annotations

import numpy as np

from neurohw.core import rng  # the counter-based generator (neurohw/core/rng.py), also importable from here
from neurohw.spec import NetworkSpec
from neurohw.substrates import Trace
from neurohw.substrates.analog.model import Scenario, crossbars_from_spec, load_scenario

ENGINES = ("kernel", "twin")


class AnalogSubstrate:
    name = "analog"

    def __init__(self, scenario: Scenario | None = None, engine: str = "kernel"):
        from neurohw.errors import ConfigError

        if engine not in ENGINES:
            raise ConfigError(f"unknown analog engine '{engine}'; valid: {', '.join(ENGINES)}")
        self.scenario = scenario or Scenario()
        self.engine = engine

    def run(self, spec: NetworkSpec, x: np.ndarray, cfg=None, rng=None, first_id: int = 0, progress=None) -> Trace:
        """Free phase of the network input `x` (B, *input_shape); sample i draws its noise with the
        counter `first_id + i`, so results do not depend on how the samples are batched. `progress`,
        if given, is called after every batch with the number of samples done (neurohw.progress)."""
        sc = self.scenario
        cb = crossbars_from_spec(spec, sc.device, sc.noise, sc.substrate.seed, sc.peripherals.ir_drop)
        if self.engine == "kernel":
            from neurohw.substrates.analog.kernels import relax
        else:
            from neurohw.substrates.analog.twin import relax
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        outs, steps = [], []
        bs = sc.substrate.batch_size
        for i in range(0, len(x), bs):
            ids = np.arange(first_id + i, first_id + min(i + bs, len(x)), dtype=np.int64)
            _, st, out = relax(cb, sc.substrate, sc.peripherals, x[i : i + bs], ids)
            outs.append(out)
            steps.append(st)
            if progress is not None:
                progress(min(i + bs, len(x)))
        empty = np.zeros((0, spec.layers[-1].out_shape[0]))
        return Trace(np.concatenate(outs) if outs else empty, np.concatenate(steps) if steps else np.zeros(0, np.int64))


def prepare_kernels(announce=None) -> tuple[bool, float]:
    """Make the numba kernel ready before a timed run: one tiny call with the argument types of every
    real call loads its machine code from numba's disk cache or, on a fresh install (or after its
    sources changed), compiles it, which takes tens of seconds; `announce()` is called when
    compilation starts (core/compile_watch.py). Returns (whether it compiled, seconds spent)."""
    from neurohw.core.compile_watch import compiling
    from neurohw.substrates.analog import kernels
    from neurohw.substrates.analog.model import ACTIVATION_IDS, Crossbars, PeripheralConfig, SubstrateConfig

    w = [np.zeros((2, 2)), np.zeros((2, 2))]
    cb = Crossbars(forward=w, backward=w, biases=[np.zeros(2), np.zeros(2)], w_max=[0.0, 0.0], readout=None,
                   readout_bias=None, readout_w_max=0.0, sizes=[2, 2], alpha=[1.0, 1.0], readout_alpha=1.0,
                   act_id=next(iter(ACTIVATION_IDS.values())), nudge_outside=False)
    with compiling(announce, only=[kernels.relax_kernel]) as c:
        kernels.relax(cb, SubstrateConfig(t_max_s=1e-7), PeripheralConfig(), np.zeros((1, 2)), np.zeros(1, np.int64))
    return c.compiled, c.seconds


__all__ = ["AnalogSubstrate", "Scenario", "load_scenario", "prepare_kernels", "rng"]

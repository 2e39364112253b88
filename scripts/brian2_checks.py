#!/usr/bin/env python
"""The numbers behind the Brian2 tests (docs/results.md §8), printed rather than asserted:

    python scripts/brian2_checks.py

* LIF rate encoding: max |ν/ν_max − ρ(u)| of one layer driven by constant u ∈ [−0.4, 1.4] (500 ms of
  spikes), at Δt = 0.01 ms and at the card's 0.1 ms;
* C-EP as plasticity on a 16-12-8-5 net, one sample, β 0.5, η 0.01: cosine and relative error of the
  brian2 weight change against neurohw's torch C-EP update, rate model at Δt = τ/20 and τ/5, and the
  LIF model (τ_p = 200 ms) — the settings of tests/unit/test_brian2.py. numpy target, float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_analog import small  # noqa: E402
from test_brian2 import cosine, one_layer_spec, scenario, torch_cep_update  # noqa: E402

from neurohw.substrates.brian2 import Brian2Substrate  # noqa: E402


def main() -> None:
    u = np.linspace(-0.4, 1.4, 10)
    for act in ("sigmoid4", "hard_sigmoid"):
        rho = 1 / (1 + np.exp(-4 * (u - 0.5))) if act == "sigmoid4" else np.clip(u, 0, 1)
        for dt in (0.01, 0.1):
            sc = scenario("brian2.model=lif", "brian2.target=numpy", f"brian2.dt_ms={dt}", "brian2.t_free_ms=600",
                          "lif.read_ms=500", card="sims/brian2_lif.toml")
            rates = Brian2Substrate(sc).run(one_layer_spec(np.eye(10), u).with_(activation=act), np.zeros((1, 10))).outputs[0]
            print(f"LIF rate encoding, {act}, dt {dt} ms: max |rate − ρ(u)| = {np.abs(rates - np.maximum(rho, 1e-3)).max():.4f}")

    spec = small("fc", "sigmoid4").with_(nudge="outside")
    x, y = np.random.default_rng(0).random((1, 16)), np.eye(5)[[2]]
    lrs = [0.01, 0.01, 0.01]
    dw, db = torch_cep_update(spec, x, y, 0.5, 60, lrs)
    runs = {
        "rate, dt = tau/20": scenario("brian2.tau_ms=1", "brian2.dt_ms=0.05", "brian2.t_free_ms=60", "brian2.t_nudge_ms=60",
                                      "brian2.target=numpy"),
        "rate, dt = tau/5": scenario("brian2.tau_ms=1", "brian2.dt_ms=0.2", "brian2.t_free_ms=60", "brian2.t_nudge_ms=60",
                                     "brian2.target=numpy"),
        "LIF, tau_p = 200 ms": scenario("brian2.target=numpy", "brian2.t_free_ms=600", "brian2.t_nudge_ms=500",
                                        "lif.tau_plast_ms=200", card="sims/brian2_lif.toml"),
    }
    for name, sc in runs.items():
        r = Brian2Substrate(sc).nudged(spec, x, y, beta=0.5, lrs=lrs)
        cos = [cosine(a, b) for a, b in zip(r.delta_w, dw)]
        rel = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(r.delta_w, dw)]
        rel_b = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(r.delta_b, db)]
        every = cosine(np.concatenate([a.ravel() for a in r.delta_w]), np.concatenate([b.ravel() for b in dw]))
        print(f"C-EP plasticity, {name}: cosine all {every:.4f}, per layer {', '.join(f'{c:.4f}' for c in cos)}; "
              f"relative error weights {', '.join(f'{100 * e:.1f} %' for e in rel)}, biases {', '.join(f'{100 * e:.1f} %' for e in rel_b)}")


if __name__ == "__main__":
    main()

"""C-EP written to pulsed devices in situ (docs/math.md eq. insitu): the learner of in-situ training.

The network lives on crossbars of pulsed devices (`substrates/analog/insitu.py` `InSituNet`). Per
batch the free phase settles on the analog substrate's numpy twin; then T_nudge nudged intervals of
`interval_steps` integration steps each; after interval k the local C-EP update of every layer,

    ΔW = (η/(βB)) Σ_b (s'_{k+1} s_{k+1}ᵀ − s'_k s_kᵀ),   Δb = (η/(βB)) Σ_b (s'_{k+1} − s'_k)

(s' post-synaptic, s pre-synaptic; eq. C-EP at the substrate's own dynamics), is written to the devices
as stochastic pulse trains, one vector update per sample and term (aihwkit's scheme, ≤ desired_bl
pulses per cross-point and update): `write = "phase"` writes the two phase terms +s'_{k+1}s_{k+1}ᵀ and
−s'_k s_kᵀ separately; `write = "contrast"` forms the difference first, as Δs' s_{k+1}ᵀ + s'_k Δsᵀ (the
same ΔW, far fewer and balanced pulses; asymmetric devices show the difference). Biases are digital.
Its expected update is software C-EP's (tests/unit/test_insitu.py). Random-sign β draws its sign from
the counter-based generator at the write counter, so a resumed run draws the same signs.
"""

from __future__ import annotations

import numpy as np

from neurohw.choices import CONTINUAL_ESTIMATORS
from neurohw.core import rng
from neurohw.devices.pulse_kernels import outer_update
from neurohw.errors import ConfigError
from neurohw.substrates.analog import twin

ONE_PHASE = tuple(e for e in CONTINUAL_ESTIMATORS if e != "symmetric")  # in situ: one nudged phase per batch

RANDOM_SIGN_TAG = 0x5EED_5161  # the key coordinate of the random-sign draws (distinct from every pulse key)
WRITES = ("phase", "contrast")


class PulsedCEP:
    """C-EP whose updates are pulses on the devices of an `InSituNet` (module doc)."""

    name = "cep"

    def __init__(self, beta: float, T_nudge: int, estimator: str, *, interval_steps: int, write: str, pulse_seed: int,
                 update_cfg, substrate, peripherals):
        if estimator not in ONE_PHASE:
            raise ConfigError(f"learner.estimator = '{estimator}': in-situ C-EP runs one nudged phase (one-sided | random-sign)")
        if write not in WRITES:
            raise ConfigError(f"insitu.write = '{write}' is not valid; valid: {', '.join(WRITES)}")
        self.beta, self.T_nudge, self.estimator = float(beta), int(T_nudge), estimator
        self.interval_steps, self.write, self.pulse_seed = int(interval_steps), write, int(pulse_seed)
        self.update_cfg, self.substrate, self.peripherals = update_cfg, substrate, peripherals
        self.counter = 0  # vector updates written so far: the key of every pulse train (and of β's sign)
        self.pulses = 0

    def batch_beta(self) -> float:
        """β of the next batch: +β (one-sided) or ±β, the sign drawn from the counter-based generator at
        the current write counter."""
        if self.estimator == "one-sided":
            return self.beta
        u = float(rng.uniform(rng.key(self.pulse_seed, RANDOM_SIGN_TAG, self.counter)))
        return self.beta if u < 0.5 else -self.beta

    def _write(self, net, i: int, d: np.ndarray, x: np.ndarray, coeff: float) -> None:
        """W_i += coeff·Σ_b d_b x_bᵀ as pulses on W_dev = W_i/α_i (outer_update writes W − lr·d xᵀ)."""
        self.counter += 1
        self.pulses += outer_update(net.arrays[i], x, d, -coeff / net.alpha[i], self.update_cfg, self.pulse_seed, self.counter)

    def step(self, net, x: np.ndarray, y: np.ndarray, ids: np.ndarray, lrs: list[float]) -> tuple[float, int]:
        """One batch: (mean loss at the free fixed point, right answers)."""
        cb = net.crossbars()
        s, _, out = twin.relax(cb, self.substrate, self.peripherals, x, ids)
        loss = float(0.5 * ((out - y) ** 2).sum(1).mean())
        correct = int((out.argmax(1) == y.argmax(1)).sum())
        b = x.shape[0]
        beta = self.batch_beta()
        for k in range(self.T_nudge):
            s_next, _, _ = twin.relax(cb, self.substrate, self.peripherals, x, ids, s0=s, y=y, beta=beta,
                                      steps=self.interval_steps, phase=k + 1)
            pre, pre_n = [x, *s[:-1]], [x, *s_next[:-1]]
            for i in range(len(net.arrays)):
                coeff = lrs[i] / (beta * b)
                if self.write == "phase":
                    self._write(net, i, s_next[i], pre_n[i], coeff)
                    self._write(net, i, s[i], pre[i], -coeff)
                else:
                    self._write(net, i, s_next[i] - s[i], pre_n[i], coeff)
                    if i > 0:  # the input does not change: x has no Δ term
                        self._write(net, i, s[i], pre_n[i] - pre[i], coeff)
                net.biases[i] += coeff * (s_next[i] - s[i]).sum(0)
            cb = net.crossbars()
            s = s_next
        return loss, correct

"""Substrates run an exported NetworkSpec: `torch` (the reference), and with later issues `analog`
(numba crossbar kernels) and `brian2`. Each consumes the spec only, never neurohw's training modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from neurohw.spec import NetworkSpec


@dataclass
class Trace:
    """What a substrate returns for a batch: the output scores after the free phase."""

    outputs: np.ndarray  # (B, n_outputs)
    steps: np.ndarray | None = None  # integration steps until each sample settled (continuous-time substrates)

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs.argmax(1)


class Substrate(Protocol):
    name: str

    def run(self, spec: NetworkSpec, x: np.ndarray, cfg=None, rng: np.random.Generator | None = None) -> Trace: ...

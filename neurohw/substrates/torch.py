"""The torch substrate: the reference dynamics (eq. dyn) of a spec, with neurohw's engine."""

from __future__ import annotations

import numpy as np
import torch

from neurohw.learning.base import free_phase
from neurohw.nets.convert import from_spec
from neurohw.spec import NetworkSpec
from neurohw.substrates import Trace


class TorchSubstrate:
    name = "torch"

    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 1000):
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size

    @torch.no_grad()
    def run(self, spec: NetworkSpec, x: np.ndarray, cfg=None, rng: np.random.Generator | None = None) -> Trace:
        """Free phase of T_free steps (or async sweeps: `spec.relaxation`) on the network input `x`
        (B, *input_shape); deterministic."""
        net = from_spec(spec, self.dtype, self.device)
        outs = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(x[i : i + self.batch_size]), dtype=self.dtype, device=self.device)
            _, s = free_phase(net, xb, spec.T_free, order=spec.relaxation)
            outs.append(net.output(s).cpu().numpy())
        return Trace(np.concatenate(outs) if outs else np.zeros((0, spec.layers[-1].out_shape[0]), np.float32))

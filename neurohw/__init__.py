"""neurohw: Equilibrium Propagation and its relatives for neuromorphic hardware.

The public API is what this module re-exports. Importing neurohw imports torch but never numba or
brian2 (their substrates import them on use).
"""

from __future__ import annotations

__version__ = "0.1.0"

from neurohw.config import RunConfig, load_config
from neurohw.core.activations import ACTIVATIONS, Activation, get_activation
from neurohw.dynamics import relax, step_autograd
from neurohw.errors import CheckpointError, ConfigError, DataError, DivergenceError, NeurohwError
from neurohw.learning import BP, BPTT, CEP, CVF, EP, LEARNERS, Learner, build_learner
from neurohw.nets.build import build_net
from neurohw.nets.layered import LayeredNet, build_fc
from neurohw.nets.layers import Conv2d, Dense

__all__ = [
    "ACTIVATIONS", "Activation", "BP", "BPTT", "CEP", "CVF", "CheckpointError", "ConfigError", "Conv2d",
    "DataError", "Dense", "DivergenceError", "EP", "LEARNERS", "LayeredNet", "Learner", "NeurohwError",
    "RunConfig", "__version__", "build_fc", "build_learner", "build_net", "get_activation", "load_config",
    "relax", "step_autograd",
]

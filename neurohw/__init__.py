"""neurohw: Equilibrium Propagation and its relatives for neuromorphic hardware.

The public API is what this module re-exports. Importing neurohw imports neither torch nor numba nor
brian2: the configuration, the errors and the activation registry are loaded at once (numpy only), the
torch API (nets, dynamics, learners) on first access of its names, so that the framework-free layers
(neurohw.spec, neurohw.io.hdf5, neurohw.devices, the analog and Brian2 substrates) work without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from neurohw.config import RunConfig, load_config
from neurohw.core.activations import ACTIVATIONS, Activation, get_activation
from neurohw.errors import CheckpointError, ConfigError, DataError, DivergenceError, NeurohwError

_TORCH_API = {  # name → the module that defines it (imported on first access)
    "relax": "neurohw.dynamics", "step_autograd": "neurohw.dynamics",
    "BP": "neurohw.learning", "BPTT": "neurohw.learning", "CEP": "neurohw.learning", "CVF": "neurohw.learning",
    "EP": "neurohw.learning", "LEARNERS": "neurohw.learning", "Learner": "neurohw.learning",
    "build_learner": "neurohw.learning",
    "build_net": "neurohw.nets.build",
    "LayeredNet": "neurohw.nets.layered", "build_fc": "neurohw.nets.layered",
    "Conv2d": "neurohw.nets.layers", "Dense": "neurohw.nets.layers",
}


def __getattr__(name: str) -> Any:
    module = _TORCH_API.get(name)
    if module is None:
        raise AttributeError(f"module 'neurohw' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


__all__ = [
    "ACTIVATIONS", "Activation", "BP", "BPTT", "CEP", "CVF", "CheckpointError", "ConfigError", "Conv2d",
    "DataError", "Dense", "DivergenceError", "EP", "LEARNERS", "LayeredNet", "Learner", "NeurohwError",
    "RunConfig", "__version__", "build_fc", "build_learner", "build_net", "get_activation", "load_config",
    "relax", "step_autograd",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

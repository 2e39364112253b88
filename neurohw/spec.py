"""NetworkSpec: a trained network as plain numpy arrays and metadata, the contract between
training and every substrate (docs/hdf5.md).

A spec holds everything needed to run the network's dynamics without neurohw's torch code: the
layers (type, shapes, stride, padding, pooling, float32 weights and biases, untied feedback weights
for C-VF), the activation, the cost and readout, the nudge placement, T_free, T_nudge and β, the
input preprocessing, the training provenance, and an optional device mapping (conductances).

This module needs numpy only: the substrates and the HDF5 reader use it without torch. The names a
spec's fields may take are defined here, once (the config checks, the nets and the reader import
them). The conversion from and to torch nets lives beside the nets (neurohw/nets/convert.py: `to_spec`,
`from_spec`, exact round trip for float32 nets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

ARCHITECTURES = ("fc", "conv")
RELAXATIONS = ("sync", "async")  # the update order of the dynamics (docs/math.md eq. dyn, async)
LAYER_TYPES = ("dense", "conv2d")
COSTS = ("mse", "ce_readout")  # docs/math.md eq. ℓ
NUDGES = ("inside", "outside")  # where the nudge enters the output layer (eq. dyn, dyn-out)
POOLS = ("max2", "avg2", "none")  # the pooling of a conv2d layer


@dataclass(frozen=True, eq=False)
class ConductanceSpec:
    """A layer's weights as differential pairs of conductances: W = (g_plus − g_minus)/scale."""

    g_plus_uS: np.ndarray  # float32, shape of the layer's weight
    g_minus_uS: np.ndarray
    g_min_uS: float
    g_max_uS: float
    scale_uS_per_unit: float
    levels: np.ndarray | None = None  # int16 programmed level index of g_plus − g_min (quantised mapping)
    stuck_mask: np.ndarray | None = None  # uint8: 0 ok, 1 stuck at g_min, 2 stuck at g_max

    def effective_weight(self) -> np.ndarray:
        return ((self.g_plus_uS.astype(np.float64) - self.g_minus_uS) / self.scale_uS_per_unit).astype(np.float32)


@dataclass(frozen=True, eq=False)
class LayerSpec:
    type: str  # "dense" | "conv2d"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray  # float32: dense (out, in), conv2d (out_ch, in_ch, kh, kw)
    bias: np.ndarray  # float32 (out,) or (out_ch,)
    stride: int = 1
    padding: int = 0
    pool: str = "none"  # "max2" | "avg2" | "none" (conv2d)
    readout: bool = False
    weight_backward: np.ndarray | None = None  # C-VF: feedback s_out @ weight_backward
    conductance: ConductanceSpec | None = None


@dataclass(frozen=True)
class DeviceSpec:
    model: str
    params: dict[str, Any]


@dataclass(frozen=True, eq=False)
class NetworkSpec:
    architecture: str  # "fc" | "conv"
    activation: str
    cost: str  # "mse" | "ce_readout"
    T_free: int
    T_nudge: int
    beta: float
    input_shape: tuple[int, ...]  # the network input (flattened for a dense first layer)
    image_shape: tuple[int, ...]  # (C, H, W) of the images
    input_mean: tuple[float, ...]  # per channel: input = (pixel/pixel_scale − mean)/std
    input_std: tuple[float, ...]
    layers: tuple[LayerSpec, ...]
    nudge: str = "inside"
    relaxation: str = "sync"  # T_free counts synchronous steps, or async sweeps (docs/math.md eq. async)
    pixel_scale: float = 255.0  # images are divided by it: 255 for uint8 pixels, 1 for float arrays
    dataset: dict[str, Any] = field(default_factory=dict)  # the training data: name, path, sha256, resize (docs/hdf5.md)
    config_toml: str = ""
    algorithm: str = ""
    test_error: float = math.nan
    val_error: float = math.nan
    seed: int = 0
    device: DeviceSpec | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "NetworkSpec":
        return replace(self, **changes)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Images (B, C, H, W) — uint8 pixels, or the float values of an arrays dataset — → network input
        (B, *input_shape), float32: (x/pixel_scale − mean)/std per channel."""
        c = len(self.input_mean)
        mean = np.asarray(self.input_mean, dtype=np.float32).reshape(1, c, 1, 1)
        std = np.asarray(self.input_std, dtype=np.float32).reshape(1, c, 1, 1)
        x = (images.astype(np.float32) / np.float32(self.pixel_scale) - mean) / std
        return x.reshape(x.shape[0], *self.input_shape)

"""NetworkSpec: a trained network as plain numpy arrays and metadata, the contract between
training and every substrate (docs/hdf5.md).

A spec holds everything needed to run the network's dynamics without neurohw's torch code: the
layers (type, shapes, stride, padding, pooling, float32 weights and biases, untied feedback weights
for C-VF), the activation, the cost and readout, the nudge placement, T_free, T_nudge and β, the
input preprocessing, the training provenance, and an optional device mapping (conductances).
`to_spec(net)` and `from_spec(spec)` round-trip exactly for float32 nets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from neurohw.errors import ConfigError
from neurohw.nets.layered import LayeredNet
from neurohw.nets.layers import Conv2d, Dense

ARCHITECTURES = ("fc", "conv")
RELAXATIONS = ("sync", "async")  # the update order of the dynamics (docs/math.md eq. dyn, async)
LAYER_TYPES = ("dense", "conv2d")


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
    input_mean: tuple[float, ...]  # per channel: input = (pixel/255 − mean)/std
    input_std: tuple[float, ...]
    layers: tuple[LayerSpec, ...]
    nudge: str = "inside"
    relaxation: str = "sync"  # T_free counts synchronous steps, or async sweeps (docs/math.md eq. async)
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
        """uint8 images (B, C, H, W) → network input (B, *input_shape), float32."""
        c = len(self.input_mean)
        mean = np.asarray(self.input_mean, dtype=np.float32).reshape(1, c, 1, 1)
        std = np.asarray(self.input_std, dtype=np.float32).reshape(1, c, 1, 1)
        x = (images.astype(np.float32) / np.float32(255.0) - mean) / std
        return x.reshape(x.shape[0], *self.input_shape)


def to_spec(net: LayeredNet, **meta: Any) -> NetworkSpec:
    """The spec of a trained net; `meta` fills the other fields (T_free, beta, input_mean, …)."""
    layers = []
    for i, layer in enumerate(net.layers):
        w = layer.weight.detach().cpu().to(torch.float32).numpy().copy()
        b = layer.bias.detach().cpu().to(torch.float32).numpy().copy()
        readout = net.cost == "ce_readout" and i == len(net.layers) - 1
        if isinstance(layer, Dense):
            wb = None if layer.weight_backward is None else layer.weight_backward.detach().cpu().to(torch.float32).numpy().copy()
            layers.append(LayerSpec("dense", tuple(layer.in_shape), tuple(layer.out_shape), w, b, readout=readout, weight_backward=wb))
        else:
            layers.append(
                LayerSpec("conv2d", tuple(layer.in_shape), tuple(layer.out_shape), w, b, layer.stride, layer.padding, layer.pool)
            )
    architecture = "conv" if any(l.type == "conv2d" for l in layers) else "fc"
    return NetworkSpec(
        architecture=architecture,
        activation=net.activation.name,
        cost=net.cost,
        nudge=net.nudge,
        input_shape=tuple(net.input_shape),
        layers=tuple(layers),
        **meta,
    )


def from_spec(spec: NetworkSpec, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> LayeredNet:
    """The LayeredNet of a spec (weights copied; the effective weights of a device mapping are
    already in `weight`)."""
    layers: list[Dense | Conv2d] = []
    for i, ls in enumerate(spec.layers):
        if ls.type == "dense":
            layer = Dense(ls.in_shape, ls.out_shape[0], backward=ls.weight_backward is not None)
        elif ls.type == "conv2d":
            kh = ls.weight.shape[2]
            layer = Conv2d(ls.in_shape, ls.weight.shape[0], kh, stride=ls.stride, padding=ls.padding, pool=ls.pool)
        else:
            raise ConfigError(f"layer {i:02d}: unknown type '{ls.type}'; valid: {', '.join(LAYER_TYPES)}")
        if tuple(layer.out_shape) != tuple(ls.out_shape):
            raise ConfigError(f"layer {i:02d}: out_shape {ls.out_shape} does not match its parameters ({layer.out_shape})")
        with torch.no_grad():
            for name, arr in (("weight", ls.weight), ("bias", ls.bias), ("weight_backward", ls.weight_backward)):
                if arr is None:
                    continue
                param = getattr(layer, name)
                if tuple(param.shape) != tuple(arr.shape):
                    raise ConfigError(f"layer {i:02d}: {name} has shape {arr.shape}, expected {tuple(param.shape)}")
                param.copy_(torch.from_numpy(np.ascontiguousarray(arr)))
        layers.append(layer)
    net = LayeredNet(spec.input_shape, layers, spec.activation, spec.cost, spec.nudge)
    return net.to(device=device, dtype=dtype)

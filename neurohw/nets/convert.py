"""A trained net as a NetworkSpec and back (the torch side of the weight contract, neurohw/spec.py).

`to_spec(net)` and `from_spec(spec)` round-trip exactly for float32 nets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neurohw.errors import ConfigError
from neurohw.nets.layered import LayeredNet
from neurohw.nets.layers import Conv2d, Dense
from neurohw.spec import LAYER_TYPES, LayerSpec, NetworkSpec


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def to_spec(net: LayeredNet, **meta: Any) -> NetworkSpec:
    """The spec of a trained net; `meta` fills the other fields (T_free, beta, input_mean, …)."""
    layers = []
    for i, layer in enumerate(net.layers):
        w, b = _numpy(layer.weight), _numpy(layer.bias)
        readout = net.cost == "ce_readout" and i == len(net.layers) - 1
        if isinstance(layer, Dense):
            wb = None if layer.weight_backward is None else _numpy(layer.weight_backward)
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

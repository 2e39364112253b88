"""Build a LayeredNet from a NetConfig and a dataset's input shape (docs/math.md §Φ)."""

from __future__ import annotations

import math

import torch

from neurohw.errors import ConfigError
from neurohw.nets.layered import LayeredNet, init_params
from neurohw.nets.layers import Conv2d, Dense


def build_net(
    cfg,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    untied: bool = False,
    generator: torch.Generator | None = None,
) -> LayeredNet:
    """Layers from `cfg` (a NetConfig): conv layers (conv), dense hidden layers, then the output.

    With the "mse" cost the output layer (n_classes units) is a state of the dynamics; with
    "ce_readout" it is the readout, and the last hidden layer is the last state. `untied=True`
    gives the dense feedback connections their own weights (C-VF).
    """
    layers: list[Dense | Conv2d] = []
    shape: tuple[int, ...] = tuple(input_shape)
    if cfg.architecture == "conv":
        if untied:
            raise ConfigError("untied feedback weights (learner.algorithm = 'cvf') are implemented for net.architecture = 'fc' only")
        n = len(cfg.channels)
        strides = cfg.strides or (1,) * n
        paddings = cfg.paddings or (0,) * n
        pools = cfg.pools or ("max2",) * n
        for i in range(n):
            try:
                layer = Conv2d(shape, cfg.channels[i], cfg.kernel_sizes[i], stride=strides[i], padding=paddings[i], pool=pools[i])
            except ConfigError as e:
                raise ConfigError(f"net conv layer {i}: {e}") from None
            layers.append(layer)
            shape = layer.out_shape
    else:
        shape = (math.prod(shape),)
    for size in (*cfg.hidden, n_classes):
        layers.append(Dense(shape, size, backward=untied and len(layers) > 0))
        shape = (size,)
    if cfg.cost == "ce_readout":
        if len(layers) < 2:
            raise ConfigError("net.cost = 'ce_readout' needs at least one hidden layer (net.hidden or net.channels)")
    in_shape = input_shape if cfg.architecture == "conv" else (math.prod(input_shape),)
    net = LayeredNet(in_shape, layers, cfg.activation, cfg.cost, cfg.nudge)
    init_params(net, cfg.init_gains, generator)
    return net

"""Free and nudged relaxation of a layered net (docs/math.md eq. dyn, async, chains).

`relax` runs T steps of `LayeredNet.phase` (the one closed-form step) from a state: synchronous steps
s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)) (`order="sync"`, the papers' dynamics), or asynchronous sweeps (even
layers, then odd layers from their fresh neighbours, `order="async"`); the input drive D_0(x) is
computed once by the caller and passed in. `step_autograd` is the same step written the usual
research-code way (∂Φ^β/∂s by autograd of Φ, the input drive recomputed every step): the reference for
tests and the baseline of `neurohw bench`.

Non-finite states are looked for once at the end of a phase. Eagerly (`check=True`) that is one host
synchronisation per phase; a non-finite state then has the phase replayed step by step to name the
first layer and step that went non-finite. In a captured update (`flags=FiniteFlags`) nothing is read
on the host: the end of each phase sets a flag on the device, read once per N batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from neurohw.errors import ConfigError, DivergenceError
from neurohw.nets.layered import LayeredNet, Scalar, State
from neurohw.spec import RELAXATIONS

ORDERS = RELAXATIONS


def step_autograd(net: LayeredNet, x: torch.Tensor, state: State, y: torch.Tensor | None, beta: float) -> State:
    """s_{t+1} = ρ(∂Φ^β/∂s) with ∂Φ^β/∂s from autograd of Φ^β (reference implementation; with
    `net.nudge == "outside"` the nudge −β∂ℓ/∂s_N = ∂(Φ^β − Φ)/∂s_N is added after ρ)."""
    with torch.enable_grad():
        s = [t.detach().requires_grad_(True) for t in state]
        grads = torch.autograd.grad(net.phi(x, s, y, beta), s)
        if net.nudge == "outside" and beta != 0.0:
            free = torch.autograd.grad(net.phi(x, s), s)
    with torch.no_grad():
        if net.nudge == "outside" and beta != 0.0:
            out = [net.activation(g) for g in free]
            out[-1] = out[-1] + (grads[-1] - free[-1])
            return out
        return [net.activation(g) for g in grads]


class FiniteFlags:
    """Non-finite states recorded on the device, without a host synchronisation.

    Per phase an accumulator adds 0 × (the sum of the phase's end state): it stays 0 while every state
    is finite and turns NaN for good at the first NaN or ±Inf (0·Inf = NaN) — one kernel per phase
    besides the sum. Which batch and step went first is found by replaying eagerly (program.py).
    """

    def __init__(self, names: tuple[str, ...], device: torch.device | str):
        self.names = tuple(names)
        self.acc = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def record(self, name: str, state: State) -> None:
        if name not in self.names:
            raise ValueError(f"phase '{name}' has no flag (flags: {', '.join(self.names)})")
        self.acc[self.names.index(name)].add_(_total(state), alpha=0.0)

    def reset(self) -> None:
        self.acc.zero_()

    def read(self) -> list[str]:
        """The phases flagged since the last reset (one host synchronisation)."""
        return [n for n, v in zip(self.names, self.acc.tolist()) if v != 0.0]


def relax(
    net: LayeredNet,
    x_drive: torch.Tensor,
    state: State,
    steps: int,
    y: torch.Tensor | None = None,
    beta: Scalar = 0.0,
    *,
    phase: str = "free",
    check: bool = True,
    order: str = "sync",
    flags: FiniteFlags | None = None,
    operands: torch.dtype | None = None,
) -> State:
    """Run `steps` steps (sync) or sweeps (async) from `state` (not modified); the final state.

    A synchronous free phase of an all-dense net runs as two interleaved chains
    (`Phase.free_checkerboard`, half the tensor operations); other phases step by step. With `flags`
    the end state is recorded on the device under `phase` instead of being checked on the host.
    """
    if order not in ORDERS:
        raise ConfigError(f"learner.relaxation = '{order}' is not valid; valid: {', '.join(ORDERS)}")
    ph = net.phase(x_drive, y, beta, operands=operands)
    advance = ph.sweep if order == "async" else ph.step
    if order == "sync" and ph.fold and not ph.nudged:
        s = ph.free_checkerboard(state, steps)
    else:
        s = state
        for _ in range(steps):
            s = advance(s)
    if flags is not None:
        flags.record(phase, s)
    elif check and not _all_finite(s):
        check_finite(s, phase, advance, state, steps)
    return s


def relax_autograd(
    net: LayeredNet, x: torch.Tensor, state: State, steps: int, y: torch.Tensor | None = None,
    beta: float = 0.0, *, phase: str = "free", check: bool = True,
) -> State:
    """`relax` with `step_autograd` (reference; takes the input itself, not its drive)."""
    s = state
    for _ in range(steps):
        s = step_autograd(net, x, s, y, beta)
    if check:
        check_finite(s, phase, lambda r: step_autograd(net, x, r, y, beta), state, steps)
    return s


def _first_bad_layer(state: State) -> int | None:
    for i, t in enumerate(state):
        if not bool(torch.isfinite(t).all()):
            return i
    return None


def _total(state: State) -> torch.Tensor:
    """The sum of every state's sum: a NaN or ±Inf anywhere makes it non-finite (a false alarm needs
    a finite sum to overflow, i.e. states near the float range limit)."""
    total = state[0].sum()
    for t in state[1:]:
        total = total + t.sum()
    return total


def _all_finite(state: State) -> bool:
    return bool(torch.isfinite(_total(state)))


def check_finite(
    final: State, phase: str, step: Callable[[State], State] | None = None, start: State | None = None, steps: int = 0
) -> None:
    """Raise DivergenceError naming the layer (s_1 … s_N) and the first step that went non-finite.

    The phase is replayed from `start` with `step` only once a non-finite value has been found.
    """
    if _all_finite(final):
        return
    bad = _first_bad_layer(final)
    if bad is None:
        raise DivergenceError(f"the state of the {phase} phase is finite but its sum overflows: the states diverge")
    where = ""
    if step is not None and start is not None:
        s = start
        for k in range(1, steps + 1):
            s = step(s)
            layer = _first_bad_layer(s)
            if layer is not None:
                bad, where = layer, f" at step {k}"
                break
    raise DivergenceError(
        f"state of layer {bad + 1} (s_{bad + 1}) became non-finite{where} of the {phase} phase; "
        "lower the learning rate or beta, or check the input for NaN/Inf"
    )

"""Free and nudged relaxation of a layered net (docs/math.md eq. dyn).

`relax` runs T synchronous steps s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)) with the closed-form drive of
`LayeredNet.step`; the input drive D_0(x) is computed once by the caller and passed in. `step_autograd`
is the same step written the usual research-code way (∂Φ^β/∂s by autograd of Φ, the input drive
recomputed every step): the reference for tests and the baseline of `neurohw bench`.

Non-finite states are checked once at the end of a phase (no cost in the hot loop); when one is
found the phase is replayed step by step to name the first layer and step that went non-finite.
"""

from __future__ import annotations

from typing import Callable

import torch

from neurohw.errors import DivergenceError
from neurohw.nets.layered import LayeredNet, State


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


def relax(
    net: LayeredNet,
    x_drive: torch.Tensor,
    state: State,
    steps: int,
    y: torch.Tensor | None = None,
    beta: float = 0.0,
    *,
    phase: str = "free",
    check: bool = True,
) -> State:
    """Run `steps` closed-form steps from `state` (not modified) and return the final state.

    A free phase of an all-dense net runs as two interleaved chains
    (`LayeredNet.relax_free_checkerboard`, half the tensor operations); other phases step by step.
    """
    advance = None
    if beta == 0.0 and net.all_dense and not torch.is_grad_enabled():
        s = net.relax_free_checkerboard(x_drive, state, steps)
    else:
        advance = net.make_stepper(x_drive, y, beta)
        s = state
        for _ in range(steps):
            s = advance(s)
    if check and not _all_finite(s):  # the stepper for the replay is built only then
        check_finite(s, phase, advance or net.make_stepper(x_drive, y, beta), state, steps)
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


def _all_finite(state: State) -> bool:
    """One cheap test for the whole state: a NaN or ±Inf anywhere makes the sum of sums non-finite
    (a false alarm needs a finite sum to overflow, i.e. states near the float range limit)."""
    total = state[0].sum()
    for t in state[1:]:
        total = total + t.sum()
    return bool(torch.isfinite(total))


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
